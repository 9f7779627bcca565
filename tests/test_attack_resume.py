"""A real ``kill -9`` of ``grace-bench eval`` mid-attack: the rerun repeats at most one sub-attack execution,
gives the same robust flags as an uninterrupted run, and leaves no attack state behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from grace_bench.eval.config import EvalConfig
from grace_bench.eval.run import run_eval
from tests.helpers import register_tiny_suite

ATTACK = "custom:apgd-ce[iters=4],apgd-t[iters=3,targets=2]"
ROOT = Path(__file__).resolve().parents[1]

# The child is `grace-bench eval` itself (cli.main), with the tiny suite registered, a forward slowed
# enough to be killed mid-attack (same numbers), and each sub-attack execution logged to a file.
_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from tests.helpers import register_tiny_suite
from grace_bench.attacks import autoattack
from grace_bench.models.zero_shot import ZeroShotClassifier
from grace_bench.cli import main
register_tiny_suite()
log, real_perturb, real_forward = sys.argv[2], autoattack._perturb, ZeroShotClassifier.forward
def logged_perturb(*args, **kwargs):
    with open(log, "a") as fh:
        fh.write(args[1] + "\n")
    return real_perturb(*args, **kwargs)
def slow_forward(self, x):
    time.sleep(0.02)
    return real_forward(self, x)
autoattack._perturb = logged_perturb
ZeroShotClassifier.forward = slow_forward
sys.exit(main(sys.argv[3:]))
"""


def _cli_args(ckpt: str, out: Path) -> list[str]:
    return ["eval", ckpt, "--suite", "tiny-micro", "--datasets", "micro", "--n-adv", "64", "--attack", ATTACK,
            "--eps", "1/255", "--out", str(out), "--device", "cpu", "--workers", "0", "--batch-size", "16",
            "--no-progress"]


def _cfg(ckpt: str, out: Path) -> EvalConfig:
    return EvalConfig(checkpoint=ckpt, suite="tiny-micro", datasets=["micro"], n_adv=64, attack=ATTACK, eps="1/255",
                      out=out, device="cpu", workers=0, batch_size=16, progress=False)


def _chunk_states(out: Path) -> list[dict]:
    states = []
    for path in (out / "state").glob("*/*/autoattack-*/chunk-*.json"):
        try:
            states.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # written atomically, but the folder may be going away
    return states


def _count_perturb(monkeypatch) -> list[str]:
    from grace_bench.attacks import autoattack

    real, calls = autoattack._perturb, []

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(autoattack, "_perturb", counted)
    return calls


def _robust_flags(out: Path) -> list[bool]:
    (path,) = (out / "results").glob("*/micro-adversarial-*.json")
    return json.loads(path.read_text())["metrics"]["robust_flags"]


def test_sigkill_of_grace_bench_eval_resumes_repeating_at_most_one_sub_attack(tiny_clip, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    register_tiny_suite()
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}, str(weights))
    ckpt = f"tiny-clip:{weights}"
    killed_out, log = tmp_path / "killed", tmp_path / "perturb.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(ROOT), str(log), *_cli_args(ckpt, killed_out)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = False
    try:
        deadline = time.monotonic() + 300
        while child.poll() is None and time.monotonic() < deadline:
            if any(s["next_attack"] >= 1 for s in _chunk_states(killed_out)):  # one sub-attack step finished
                os.kill(child.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.01)
    finally:
        if child.poll() is None and not killed:
            child.kill()
        child.wait()
    assert killed and child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    done_steps = sum(s["next_attack"] for s in _chunk_states(killed_out))
    assert 1 <= done_steps < 4  # 2 chunks (50 + 14) x 2 sub-attacks: killed mid-way
    started_by_child = len(log.read_text().split())

    with monkeypatch.context() as m:
        fresh_calls = _count_perturb(m)
        run_eval(_cfg(ckpt, tmp_path / "fresh"))
    with monkeypatch.context() as m:
        resumed_calls = _count_perturb(m)
        summary = run_eval(_cfg(ckpt, killed_out))
    repeated = started_by_child + len(resumed_calls) - len(fresh_calls)
    assert 0 <= repeated <= 1, (started_by_child, resumed_calls, fresh_calls)
    assert _robust_flags(killed_out) == _robust_flags(tmp_path / "fresh")
    adv = summary["adversarial"]["micro"]
    assert adv["attack"] == "custom:apgd-ce[restarts=1,iters=4],apgd-t[restarts=1,iters=3,targets=2]"
    assert adv["attack_label"] == "APGD-CE 1×4 + APGD-T 1×3 (2 targets)"
    assert adv["config"]["chunk_size"] == 50 and summary["protocol"]["attack_chunk"] == 50
    assert summary["protocol"]["attack"] == adv["attack"]
    assert adv["timings"]["resumed_from"] is not None
    # Once the result is written, no attack state is left.
    for out in (killed_out, tmp_path / "fresh"):
        assert not list((out / "state").glob("*/*/autoattack-*")), list((out / "state").rglob("*"))
