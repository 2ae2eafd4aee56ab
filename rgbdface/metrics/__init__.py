"""Metrics: the depth-evaluation protocol, image and video measures."""
