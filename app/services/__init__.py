"""Queries and state changes shared by the server and the workers; routes and workers call these."""
