"""The zero-shot dataset suite: 16 classification datasets in CLIP_benchmark's webdataset or torchvision's layout.

``ZERO_SHOT_DATASETS`` (keys, in the papers' table order), ``ZERO_SHOT_TITLES`` (key -> title),
``load_zero_shot(key, ctx)`` and ``zero_shot_prompts(key, ctx)``; the suite is ``build_zero_shot_suite``.
See docs/zero-shot-data.md.
"""

from grace_bench.data.zero_shot.catalog import ZERO_SHOT_DATASETS, ZERO_SHOT_TITLES
from grace_bench.data.zero_shot.loaders import load_zero_shot, prompt_lists, zero_shot_prompts
from grace_bench.data.zero_shot.prompts import Prompts

__all__ = ["ZERO_SHOT_DATASETS", "ZERO_SHOT_TITLES", "Prompts", "load_zero_shot", "prompt_lists",
           "zero_shot_prompts"]
