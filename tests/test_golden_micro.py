"""Golden numbers of the shipped micro-CLIP: its fingerprint and its clean zero-shot counts on every micro set.

The counts go through the real eval path (``run_eval``, spec ``micro``, the 10 micro templates) and are
cross-checked with a plain OpenCLIP computation (encode_text / encode_image, manual normalisation, argmax) that
shares none of our classifier code, so a golden number cannot agree with itself by construction.
Deselect with ``-m "not regression"``.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.regression

SHIPPED_FINGERPRINT = "93060f7d5e34834ceb7bb8a4795a57b22fdb84679e207acfa74c2098b743dff2"
# dataset: (correct, n) of the shipped micro-CLIP, clean top-1, 10 micro templates, fp32 on CPU
GOLDEN_COUNTS = {
    "micro": (477, 540),
    "micro-v2": (277, 540),
    "micro-sketch": (162, 540),
    "micro-r": (202, 540),
    "micro-a": (112, 600),
}


@pytest.fixture(scope="module")
def eval_counts(tmp_path_factory):
    """{dataset: (correct, n)} from ``run_eval`` on the default checkpoint ``micro``, read from its result files."""
    from grace_bench.eval.config import EvalConfig
    from grace_bench.eval.run import run_eval

    out = tmp_path_factory.mktemp("golden")
    summary = run_eval(EvalConfig(checkpoint="micro", suite="micro", out=out, attack="none", workers=0,
                                  progress=False))
    counts = {}
    for name, entry in summary["per_dataset"].items():
        metrics = json.loads(open(entry["result_file"]).read())["metrics"]
        counts[name] = (metrics["correct"], metrics["n"])
    return counts


def _plain_open_clip_counts() -> dict[str, tuple[int, int]]:
    """The same zero-shot counts with nothing but OpenCLIP calls and the micro data."""
    import open_clip
    from safetensors.torch import load_file

    from grace_bench.data.micro import MICRO_CLASSNAMES, MICRO_DATASETS, MICRO_TEMPLATES, micro_dataset
    from grace_bench.models.clip_model import CONFIG_DIR
    from grace_bench.models.micro import SHIPPED_WEIGHTS

    open_clip.add_model_config(CONFIG_DIR)
    model = open_clip.create_model("micro-clip")
    model.load_state_dict(load_file(str(SHIPPED_WEIGHTS)))
    model.eval()
    tokenizer = open_clip.get_tokenizer("micro-clip")
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        class_vectors = []
        for name in MICRO_CLASSNAMES:
            text = model.encode_text(tokenizer([t.format(name) for t in MICRO_TEMPLATES]))
            class_vectors.append(F.normalize(F.normalize(text, dim=-1).mean(0), dim=-1))
        head = torch.stack(class_vectors, dim=1)
        counts = {}
        for name in MICRO_DATASETS:
            x, y = micro_dataset(name).tensors
            image = F.normalize(model.encode_image((x - mean) / std), dim=-1)
            counts[name] = (int((image @ head).argmax(1).eq(y).sum()), len(y))
    return counts


def test_shipped_weights_fingerprint():
    from grace_bench.models.micro import load_micro_clip

    assert load_micro_clip().fingerprint() == SHIPPED_FINGERPRINT


def test_eval_path_counts_match_golden(eval_counts):
    assert eval_counts == GOLDEN_COUNTS


def test_plain_open_clip_counts_match_eval_path(eval_counts):
    assert _plain_open_clip_counts() == eval_counts
