"""sweeplab workers: claim runs from the database, train them with Keras, record every epoch."""
