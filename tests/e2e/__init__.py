"""Real processes end to end: worker, beat, relay, simulator, demo, chaos."""
