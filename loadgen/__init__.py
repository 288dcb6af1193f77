"""Load generation and measurement: labeled corpus, traffic model, replay, collection, reports."""
