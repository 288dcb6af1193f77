"""The learning loop: decision log, feedback consumer, retrain, promotion."""
