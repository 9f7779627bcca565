"""Scores of a fine-tuned micro run, shared by the methods' integration tests: ID test top-1 and PGD-10 robust
top-1 at 4/255 on the first ``n_adv`` test images, with the head eval builds (``classifier_for``: a LAAT run is
scored with its expanded head)."""

from __future__ import annotations

import torch

# The integration recipe of every method test: 30 steps, batch 32, lr 6e-4; PGD-2 of 3/255 at 4/255 in training.
RECIPE = dict(max_steps=30, batch_size=32, lr=6e-4, warmup_steps=3, seed=0, val_max_samples=180)
ROBUST_ARGS = {"eps": "4/255", "pgd_steps": 2, "pgd_step_size": "3/255"}


def micro_scores(run_dir, test, n_adv: int) -> dict[str, float]:
    """``{"acc": ID top-1, "robust": PGD-10 top-1}`` of the run in ``run_dir`` on the micro test tensors ``test``."""
    from grace_bench.attacks.pgd import pgd_attack
    from grace_bench.data.suites import get_suite
    from grace_bench.eval.context import classifier_for
    from grace_bench.models.checkpoints import load_checkpoint

    clf = classifier_for(load_checkpoint(str(run_dir)), get_suite("micro"))
    x, y = test.tensors
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).float().mean().item()
    xa = pgd_attack(clf, x[:n_adv], y[:n_adv], eps=4 / 255, steps=10, step_size=1 / 255,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        robust = (clf(xa).argmax(1) == y[:n_adv]).float().mean().item()
    return {"acc": acc, "robust": robust}
