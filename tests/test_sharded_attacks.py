"""Attacks sharded across torchrun ranks: the deal, the resume point, and flags independent of the world size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grace_bench.attacks.loop import _resume_point
from grace_bench.attacks.sharding import deal_chunks

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "torchrun_eval.py"
CASCADE = "custom:apgd-ce[iters=3],apgd-t[iters=2,targets=2]"
ATTACKS = ["pgd[steps=3]", "apgd-ce[iters=3]", CASCADE]


def test_deal_chunks_gives_every_chunk_to_exactly_one_rank():
    for world in (1, 2, 3, 5):
        dealt = [deal_chunks(7, rank, world) for rank in range(world)]
        assert sorted(c for part in dealt for c in part) == list(range(7))
        assert max(map(len, dealt)) - min(map(len, dealt)) <= 1
    assert deal_chunks(3, 0, 2) == [0, 2] and deal_chunks(3, 1, 2) == [1] and deal_chunks(2, 2, 3) == []
    with pytest.raises(ValueError, match="rank 2"):
        deal_chunks(3, 2, 2)


def test_resume_point_is_the_first_unfinished_chunk_over_all_ranks():
    fresh = {"loaded": False, "first_todo": {"chunk": 0, "attack_index": 0}}
    resumed = {"loaded": True, "first_todo": {"chunk": 3, "attack_index": 1}}
    done = {"loaded": True, "first_todo": None}
    assert _resume_point([fresh, fresh], 4) is None
    assert _resume_point([done, resumed], 4) == {"chunk": 3, "attack_index": 1}
    assert _resume_point([fresh, resumed], 4) == {"chunk": 0, "attack_index": 0}  # rank 0 found nothing saved
    assert _resume_point([done, done], 4) == {"chunk": 4, "attack_index": 0}


def _torchrun(world: int, out: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
           str(SCRIPT), str(out), *ATTACKS]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _results(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "results").rglob("*.json"))}


def _comparable(record: dict) -> dict:
    """The record without what may differ between runs: times, the world size, the deal and the machine stamp
    (``versions``: thread counts are per process)."""
    record = json.loads(json.dumps(record))
    for key in ("created", "wall_time_s", "images_per_s", "versions"):
        record.pop(key)
    record["config"].pop("world_size")
    record["config"].pop("chunks_by_rank", None)
    record["metrics"].pop("timings", None)
    return record


@pytest.mark.slow  # two torchrun launches (world sizes 2 and 3, three attacks each): ~60 s on 2 cores
def test_sharded_attacks_give_the_single_process_flags(tmp_path, monkeypatch):
    import tests.torchrun_eval as script
    from grace_bench.attacks.autoattack import AutoAttackCascade

    cache = tmp_path / "cache"
    monkeypatch.setenv("GRACE_BENCH_CACHE", str(cache))
    script.evaluate(tmp_path / "ws1", ATTACKS)

    # a killed single-process cascade leaves chunk 0 finished and chunk 1 after its clean pass;
    # the world-size-2 run resumes from that state (chunk 0 on rank 0 is skipped, chunk 1 runs on rank 1)
    real_step, calls = AutoAttackCascade.run_step, []

    def dying_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(AutoAttackCascade, "run_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        script.evaluate(tmp_path / "ws2", [CASCADE])
    monkeypatch.setattr(AutoAttackCascade, "run_step", real_step)
    assert any((tmp_path / "ws2" / "state").rglob("chunk-00001.json"))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GRACE_BENCH_CACHE": str(cache)}
    launches = {world: _torchrun(world, tmp_path / f"ws{world}", env) for world in (2, 3)}
    for world, proc in launches.items():
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"world size {world} failed:\n{log[-4000:]}"

    single = _results(tmp_path / "ws1")
    adversarial = [name for name in single if "-adversarial-" in name]
    assert len(adversarial) == len(ATTACKS) and len(single) > len(ATTACKS)
    for name in adversarial:
        flags = single[name]["metrics"]
        assert 0 < sum(flags["robust_flags"]) < sum(flags["clean_flags"])  # the attack flips some, not all
        assert single[name]["config"]["chunks_by_rank"] == [[0, 1, 2]]
    deals = {2: [[0, 2], [1]], 3: [[0], [1], [2]]}
    for world in (2, 3):
        sharded = _results(tmp_path / f"ws{world}")
        assert sorted(sharded) == sorted(single)
        for name, record in single.items():
            assert _comparable(sharded[name]) == _comparable(record), f"{name} differs at world size {world}"
        for name in adversarial:
            assert sharded[name]["config"]["world_size"] == world
            assert sharded[name]["config"]["chunks_by_rank"] == deals[world]  # every rank attacked
        assert not (tmp_path / f"ws{world}" / "state").exists()  # resume state cleared once written
    three = _results(tmp_path / "ws3")
    assert {r["config"]["world_size"] for r in three.values() if r["kind"] == "clean"} == {3}  # 130 split 44/43/43
    cascade = next(r for r in _results(tmp_path / "ws2").values()
                   if r["kind"] == "adversarial" and r["config"]["attack"].startswith("custom:"))
    assert cascade["metrics"]["timings"]["resumed_from"] == {"chunk": 1, "attack_index": 0}
    assert cascade["metrics"]["timings"]["steps_run"] == 4  # chunks 1 and 2, two steps each; chunk 0 was saved


def test_collectives_use_a_cuda_device_under_nccl(monkeypatch):
    """NCCL rejects CPU tensors: the gather and the broadcast must build theirs on the rank's GPU."""
    import torch
    import torch.distributed as dist

    from grace_bench.attacks.sharding import collective_device

    assert collective_device(torch.device("cpu")) == torch.device("cpu")  # no process group: the CPU
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "gloo")
    assert collective_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collective_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert collective_device(torch.device("cpu")) == torch.device("cuda", 3)


def test_sharded_write_does_not_wait_for_a_held_lock(tmp_path, monkeypatch):
    """Under torchrun rank 0 must not block on the result lock while the other ranks sit in a collective."""
    import threading
    from types import SimpleNamespace

    import torch

    from grace_bench.attacks import sharding
    from grace_bench.eval import run
    from grace_bench.eval.lock import ResultLock
    from grace_bench.eval.store import ResultStore

    monkeypatch.setattr(sharding, "rank0_decides", lambda flag, world, device: flag)
    record = {"kind": "adversarial", "metrics": {"robust_flags": [True]}, "config": {"world_size": 2}}
    monkeypatch.setattr(run, "_attack", lambda *args: record)
    store = ResultStore(tmp_path)
    fp = "f" * 64
    named = SimpleNamespace(name="micro")
    clip = SimpleNamespace(fingerprint=lambda: fp)
    plan = SimpleNamespace(attack="pgd", eps="4/255", n_adv=1, protocol=None)
    cfg = SimpleNamespace(norm="Linf", seed=0)
    args = (cfg, store, clip, named, named, None, None, {}, plan, "4/255", 1, None, torch.device("cpu"), 0, 2)
    state = store.state_dir(fp, "micro", "adversarial", "x").parent  # emptied and removed by clear_state
    state.mkdir(parents=True)
    holder = None
    real_result_path = store.result_path

    def result_path(*a):  # the path depends on the config hash: lock it as soon as it is known
        nonlocal holder
        path = real_result_path(*a)
        holder = ResultLock(path, on_wait=None)
        holder.acquire()  # another process (e.g. a single-process eval) is computing this result
        return path

    monkeypatch.setattr(store, "result_path", result_path)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(run._adversarial_result(*args)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert done, "rank 0 waited for the lock of another process"
    assert store.load(done[0]) is not None  # written anyway (atomically; the same flags)
    assert state.exists()  # the other process may still need the resume state
    holder.release()
