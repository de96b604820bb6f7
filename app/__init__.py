"""sweeplab server side: settings, database, models, services and the FastAPI app."""
