"""Shared fixtures: tiny OpenCLIP models built from config dicts (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: one thread is faster and avoids spinning on shared runners


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests skip themselves when no CUDA GPU is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu); none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one thread, and a test that changes the count (``--threads``) cannot leak it."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def tiny_clip():
    """A ``ClipModel`` around a freshly initialised ``tiny-clip`` (16 px, 2 layers), seeded."""
    from grace_bench.models.loading import build_clip_model

    torch.manual_seed(0)
    return build_clip_model("tiny-clip")


@pytest.fixture
def tiny_classifier(tiny_clip):
    """A 10-class ``ZeroShotClassifier`` on ``tiny_clip`` with micro class names and templates."""
    from grace_bench.data.micro import MICRO_CLASSNAMES, MICRO_TEMPLATES
    from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head

    head = build_zero_shot_head(tiny_clip.model, tiny_clip.tokenizer, MICRO_CLASSNAMES, MICRO_TEMPLATES)
    return ZeroShotClassifier(tiny_clip.model, head, tiny_clip.mean, tiny_clip.std).eval()


@pytest.fixture(scope="session")
def micro_clip():
    """The pretrained micro-CLIP, loaded from the weights shipped in the package."""
    from grace_bench.models.micro import load_micro_clip

    return load_micro_clip()
