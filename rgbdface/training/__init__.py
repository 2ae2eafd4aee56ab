"""Training: one loop (loop.py) for the three stages; they differ by config and trainable set."""
