"""Pipelines: one file per inference task (generate, depth, depth2img, relight, talk)."""
