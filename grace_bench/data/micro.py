"""The micro suite: scikit-learn digits as 32x32 RGB, with deterministic shifts (filled in below)."""

from grace_bench.data.micro_text import MICRO_CLASSNAMES, MICRO_TEMPLATES, SINGLE_TEMPLATE

__all__ = ["MICRO_CLASSNAMES", "MICRO_TEMPLATES", "SINGLE_TEMPLATE"]
