"""Training: one loop (loop.py) for the three stages, which differ by config and trainable set; and the tiny codec (vae.py)."""
