"""Inference pipelines, one file per task."""
