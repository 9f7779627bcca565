"""grace_bench.runtime: per-rank device, launch checks, collectives on the backend's device, rank-0 writes.

No GPU exists here: ``torch.cuda`` and the torchrun environment are mocked. Where a collective must see a
tensor on "the rank's GPU", the rank's device is ``meta`` (a device torch can allocate on without a GPU).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from grace_bench.errors import UserError
from grace_bench.runtime import Runtime, init_runtime, read_launch, resolve_device

TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def env(monkeypatch):
    """Set a torchrun environment: ``env(WORLD_SIZE=..., ...)`` (every launch variable starts unset)."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))

    return set_env


@pytest.fixture
def gpus(monkeypatch):
    """Pretend ``n`` CUDA GPUs are visible; returns the list of devices passed to ``torch.cuda.set_device``."""
    calls: list = []

    def visible(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", calls.append)
        return calls

    return visible


def _fake_group(monkeypatch, *, rank: int, world: int, backend: str | None = None) -> dict:
    """Mock the default process group; ``init_process_group`` records its backend."""
    state: dict = {"initialized": False, "backend": backend}

    def init(backend, **kw):
        state.update(initialized=True, backend=backend)

    monkeypatch.setattr(dist, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: state["backend"])
    return state


def test_cuda_under_torchrun_takes_the_gpu_of_local_rank(env, gpus):
    """Every rank used to land on the first GPU: eval's ``cuda`` must become ``cuda:LOCAL_RANK``."""
    from grace_bench.eval.run import resolve_device as eval_resolve

    gpus(2)
    env(WORLD_SIZE=4, RANK=3, LOCAL_RANK=1, LOCAL_WORLD_SIZE=2, **TORCHRUN)
    assert eval_resolve("cuda") == torch.device("cuda", 1)
    assert eval_resolve("auto") == torch.device("cuda", 1)
    assert eval_resolve("cpu") == torch.device("cpu")


def test_one_process_keeps_the_device_as_given(env, gpus):
    gpus(2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")


def test_init_runtime_sets_the_rank_gpu_and_joins_nccl(env, gpus, monkeypatch):
    from grace_bench.finetune.distributed import init_distributed

    calls = gpus(2)
    env(WORLD_SIZE=4, RANK=3, LOCAL_RANK=1, LOCAL_WORLD_SIZE=2, **TORCHRUN)
    state = _fake_group(monkeypatch, rank=3, world=4)
    rt = init_runtime("cuda")
    assert (rt.rank, rt.world_size, rt.local_rank, rt.backend) == (3, 4, 1, "nccl")
    assert rt.device == torch.device("cuda", 1) and calls == [torch.device("cuda", 1)]
    assert rt.collective_device() == torch.device("cuda", 1)
    info, device = init_distributed("auto")  # the trainer's entry point: same runtime, group reused
    assert device == torch.device("cuda", 1) and info.backend == "nccl" and info.rank == 3
    state["initialized"] = False
    rt = init_runtime("cpu")
    assert rt.backend == "gloo" and rt.device == torch.device("cpu")
    assert rt.collective_device() == torch.device("cpu")


@pytest.mark.parametrize("n_gpus, launch, device, message", [
    (2, dict(WORLD_SIZE=4, RANK=2, LOCAL_RANK=2, LOCAL_WORLD_SIZE=4), "cuda",
     "torchrun started 4 processes on this node but only 2 GPU"),
    (2, dict(WORLD_SIZE=4, RANK=0, LOCAL_RANK=0, LOCAL_WORLD_SIZE=4), "auto", "--nproc_per_node 2"),
    (2, dict(WORLD_SIZE=3, RANK=2, LOCAL_RANK=2), "cuda", "only 2 GPU"),
    (2, dict(WORLD_SIZE=2, RANK=0, LOCAL_RANK=0, LOCAL_WORLD_SIZE=2), "cuda:1", "names one GPU"),
    (2, dict(WORLD_SIZE=2, RANK=1), "cuda", "LOCAL_RANK is not set"),
    (0, dict(WORLD_SIZE=2, RANK=0, LOCAL_RANK=0), "cuda", "no CUDA GPU is visible"),
    (0, {}, "cuda", "no CUDA GPU is visible; use --device cpu"),
    (2, {}, "cuda:2", "only 2 GPU(s) are visible"),
    (0, {}, "tpu:0", "unknown device 'tpu:0'"),
])
def test_inconsistent_cuda_launches_are_one_line_user_errors(env, gpus, monkeypatch, n_gpus, launch, device,
                                                             message):
    gpus(n_gpus)
    env(**launch, **(TORCHRUN if launch else {}))
    _fake_group(monkeypatch, rank=int(launch.get("RANK", 0)), world=int(launch.get("WORLD_SIZE", 1)))
    with pytest.raises(UserError) as exc:
        init_runtime(device)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("launch, message", [
    (dict(WORLD_SIZE=2, RANK=0, MASTER_PORT=1), "MASTER_ADDR is not"),
    (dict(WORLD_SIZE=2, RANK=0, MASTER_ADDR="h"), "MASTER_PORT is not"),
    (dict(WORLD_SIZE=2, **TORCHRUN), "RANK is not"),
    (dict(WORLD_SIZE=2, RANK=2, **TORCHRUN), "RANK=2 is outside 0..1"),
    (dict(WORLD_SIZE="two", RANK=0, **TORCHRUN), "WORLD_SIZE='two' is not an integer"),
    (dict(WORLD_SIZE=2, RANK=0, LOCAL_RANK=3, LOCAL_WORLD_SIZE=2, **TORCHRUN), "LOCAL_RANK=3 is outside"),
])
def test_inconsistent_environment_is_a_user_error_before_any_group_is_joined(env, monkeypatch, launch, message):
    env(**launch)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined a process group"))
    with pytest.raises(UserError) as exc:
        init_runtime("cpu")
    assert message in str(exc.value) and "torchrun" in str(exc.value) and "\n" not in str(exc.value)
    assert read_launch({"WORLD_SIZE": "1"}).distributed is False


class _Reduced(Exception):
    """Raised by the fake all_reduce after recording what it was handed (a meta tensor holds no values)."""


def _recording_all_reduce(monkeypatch, seen: list, *, stop: bool):
    def all_reduce(tensor, op=None, group=None):
        seen.append(tensor.device)
        if stop:
            raise _Reduced
        tensor.mul_(2)  # two ranks holding the same values

    monkeypatch.setattr(dist, "all_reduce", all_reduce)


def test_eval_counts_are_summed_on_the_nccl_device(monkeypatch, tiny_classifier):
    """NCCL rejects CPU tensors: the clean counts must reach all_reduce on the rank's GPU (here: meta)."""
    from grace_bench.eval.clean import evaluate_clean
    from grace_bench.eval.distributed import sum_across_ranks

    seen: list = []
    _recording_all_reduce(monkeypatch, seen, stop=True)
    _fake_group(monkeypatch, rank=1, world=2, backend="nccl")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    gpu = torch.device("meta")  # stands in for cuda:LOCAL_RANK
    data = torch.utils.data.TensorDataset(torch.rand(6, 3, 16, 16), torch.arange(6) % 10)
    with pytest.raises(_Reduced):
        evaluate_clean(tiny_classifier, data, [0, 2, 4], batch_size=2, progress=False,
                       runtime=Runtime(rank=1, world_size=2, backend="nccl", device=gpu))
    with pytest.raises(_Reduced):
        sum_across_ranks([3.0, 2.0], 2, device=gpu)  # the alias other modules call
    assert seen == [gpu, gpu]


def test_gloo_collectives_run_on_the_cpu_and_sum(monkeypatch):
    seen: list = []
    _recording_all_reduce(monkeypatch, seen, stop=False)
    rt = Runtime(rank=0, world_size=2, backend="gloo", device=torch.device("meta"))
    assert rt.sum_values([1, 2.5]) == [2.0, 5.0]
    assert seen == [torch.device("cpu")]
    assert Runtime().sum_values([1, 2]) == [1.0, 2.0]  # one process: no collective at all
    assert seen == [torch.device("cpu")]


def test_training_collectives_use_the_backend_device(monkeypatch):
    from grace_bench.finetune.distributed import DistInfo

    seen: list = []
    _recording_all_reduce(monkeypatch, seen, stop=True)
    info = DistInfo(rank=0, world_size=2, backend="nccl", device=torch.device("meta"))
    with pytest.raises(_Reduced):
        info.all_reduce_sum(torch.zeros(2))  # e.g. the trainer's finite-weights flags
    with pytest.raises(_Reduced):
        info.all_reduce_mean_([torch.zeros(3)])  # the gradient buckets
    assert seen == [torch.device("meta")] * 2


def test_current_runtime_under_nccl_reduces_on_the_current_gpu(monkeypatch):
    from grace_bench.runtime import current_runtime

    _fake_group(monkeypatch, rank=1, world=2, backend="nccl")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert current_runtime().collective_device() == torch.device("cuda", 1)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert current_runtime().collective_device() == torch.device("cpu")


def test_main_writes_lets_rank_zero_write_and_everyone_wait(monkeypatch):
    import grace_bench.runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "_WAIT_GROUP", [None, None])
    waits: list = []
    groups: list = []
    monkeypatch.setattr(dist, "new_group", lambda **kw: groups.append(kw) or f"gloo-group-{len(groups)}")
    monkeypatch.setattr(dist, "barrier", lambda group=None, **k: waits.append(group))
    for rank in (0, 1):
        with Runtime(rank=rank, world_size=2, backend="nccl").main_writes() as writer:
            assert writer == (rank == 0)
    # the wait is on one gloo group with a long timeout, not on NCCL (10 min)
    assert waits == ["gloo-group-1"] * 2 and len(groups) == 1 and groups[0]["backend"] == "gloo"
    assert groups[0]["timeout"].total_seconds() >= 3600
    with Runtime().main_writes() as writer:  # one process: it writes, nothing to wait for
        assert writer
    assert len(waits) == 2
    assert Runtime(rank=1, world_size=3).shard_strided(range(8)) == [1, 4, 7]


def test_geometry_under_torchrun_runs_on_rank_zero_only(env, monkeypatch, tmp_path):
    """The other ranks return at once: no model loaded, nothing written, no process group joined."""
    import grace_bench.models.checkpoints as checkpoints
    from grace_bench.cli import main

    env(WORLD_SIZE=2, RANK=1, LOCAL_RANK=1, LOCAL_WORLD_SIZE=2, **TORCHRUN)
    monkeypatch.setattr(checkpoints, "load_checkpoint", lambda *a, **k: pytest.fail("rank 1 loaded a model"))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined a process group"))
    out = tmp_path / "geo"
    assert main(["geometry", "weights", "micro", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    assert not out.exists() or not any(out.iterdir())


def _main_writes_worker(rank: int, port: int, folder: str) -> None:
    import os
    import time
    from pathlib import Path

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        rt = init_runtime("cpu")
        assert (rt.rank, rt.world_size, rt.backend) == (rank, 2, "gloo")
        for step in range(2):
            with rt.main_writes() as writer:
                if writer:
                    time.sleep(0.5)  # rank 1 must not run ahead of this write
                    (Path(folder) / f"step{step}").write_text("done")
            assert (Path(folder) / f"step{step}").read_text() == "done"
        assert rt.sum_values([rank, 1]) == [1.0, 2.0]
        rt.barrier()  # nobody tears the groups down while a peer is still in a collective
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes: a few seconds
def test_main_writes_and_sums_with_two_real_gloo_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_main_writes_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")


def test_nccl_barrier_names_the_rank_gpu(monkeypatch):
    seen: list = []
    monkeypatch.setattr(dist, "barrier", lambda group=None, device_ids=None: seen.append(device_ids))
    Runtime(rank=1, world_size=2, backend="nccl", device=torch.device("cuda", 1)).barrier()
    Runtime(rank=1, world_size=2, backend="gloo").barrier()
    Runtime().barrier()  # one process: no collective
    assert seen == [[1], None]
