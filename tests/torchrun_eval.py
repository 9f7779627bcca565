"""Run by tests/test_sharded_attacks.py under ``torchrun``: micro-CLIP eval on micro, one run per attack.

Usage: ``torchrun --standalone --nproc_per_node N tests/torchrun_eval.py OUT ATTACK [ATTACK ...]``. In a plain
process (no torchrun) it runs single-process; the test imports ``evaluate`` for its reference run.
"""

from __future__ import annotations

import sys
from pathlib import Path

N_ADV = 120  # three chunks of 50/50/20: world sizes 2 and 3 both deal them unevenly
LIMIT = 130  # clean: 130 images per dataset, an uneven split for world size 3


def evaluate(out: str | Path, attacks: list[str]) -> None:
    """One ``run_eval`` of micro-CLIP on micro per attack, into ``out`` (clean results are reused)."""
    from grace_bench.eval.config import EvalConfig
    from grace_bench.eval.run import run_eval

    for attack in attacks:
        run_eval(EvalConfig(suite="micro", out=Path(out), attack=attack, n_adv=N_ADV, limit=LIMIT, device="cpu",
                            workers=0, batch_size=32, progress=False))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    evaluate(sys.argv[1], sys.argv[2:])
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
