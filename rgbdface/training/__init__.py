"""Training: one loop for the three stages, and the tiny codec."""
