"""The ``zeroshot`` suite: the 16 zero-shot datasets of the robust-CLIP papers, each with its own prompts.

Every dataset is ``optional`` (a missing folder skips it unless it is asked for by name) and ``attacked``. The
adversarial defaults follow TeCoA's protocol (PGD-100 at eps 1/255); TeCoA attacks the whole test split, which a
single ``n_adv`` cannot say for 16 datasets of different sizes, so the default attacks the first 1000 images of each
(the protocol presets set the counts per dataset).
"""

from __future__ import annotations

from functools import partial

from grace_bench.data.suite_spec import DatasetSpec, Suite
from grace_bench.data.zero_shot.catalog import CATALOG
from grace_bench.data.zero_shot.loaders import load_zero_shot, prompt_lists
from grace_bench.data.zero_shot.prompts import shipped_sources


def build_zero_shot_suite() -> Suite:
    """The registry's ``zeroshot`` suite (no shared class names: each dataset has its ``prompts``)."""
    datasets = tuple(
        DatasetSpec(info.key, "zero-shot", partial(load_zero_shot, info.key), optional=True,
                    description=f"{info.title} ({info.split} split)", prompts=partial(prompt_lists, info.key),
                    attacked=True)
        for info in CATALOG
    )
    return Suite(
        name="zeroshot",
        classnames=(),
        templates=(),
        datasets=datasets,
        default_checkpoint="ViT-B-32:openai",
        needs_root=True,
        attack="pgd[steps=100]",
        eps="1/255",
        n_adv=1000,
        model_archs=(),
        loader_workers=4,
        info={
            "prompts": "per dataset: the dataset folder's classnames.txt / zeroshot_classification_templates.txt, "
                       "else the shipped lists",
            "prompt_sources": shipped_sources(),
            "wds_folders": {info.key: list(info.wds_names) for info in CATALOG},
            "torchvision_folders": {info.key: list(info.torchvision_dirs) for info in CATALOG},
        },
    )
