"""grace-bench: robust fine-tuning of CLIP models (GRACE and baselines) and the tools to measure it."""

__version__ = "0.1.0"
