"""Checks that need a CUDA GPU (marker ``gpu``: skipped automatically without one)."""

from __future__ import annotations

import pytest
import torch

from grace_bench.attacks.evaluate import evaluate_adversarial

pytestmark = pytest.mark.gpu


def _dataset(classifier, n=12):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = classifier(x).argmax(dim=1)
    y[:2] = (y[:2] + 1) % 10
    return torch.utils.data.TensorDataset(x, y)


@pytest.mark.parametrize("attack", ["pgd[steps=3]", "custom:apgd-ce[iters=3],apgd-t[iters=2,targets=2]"])
def test_attack_loop_runs_on_cuda_and_resumes_identically(tiny_classifier, tmp_path, attack):
    """The chunk loop on a GPU: per-chunk seeds on the CUDA generator, robust <= clean, a rerun reuses the state."""
    data = _dataset(tiny_classifier)
    model = tiny_classifier.cuda()
    kw = dict(attack=attack, eps="4/255", chunk_size=4, state_dir=tmp_path, progress=False)
    out = evaluate_adversarial(model, data, **kw)
    assert out["config"]["device"] == "cuda"
    robust, clean = torch.tensor(out["robust_flags"]), torch.tensor(out["clean_flags"])
    assert not (robust & ~clean).any() and not clean[:2].any()
    again = evaluate_adversarial(model, data, **kw)
    assert again["timings"]["steps_run"] == 0 and again["robust_flags"] == out["robust_flags"]
