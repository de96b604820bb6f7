"""sweeplab: the command line, and the client for scripts and notebooks."""
