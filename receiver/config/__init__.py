"""Settings read once from the environment (the bottom of the receiver: imports nothing else of it)."""
