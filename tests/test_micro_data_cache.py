"""The on-disk cache of generated micro datasets: identical arrays, no regeneration, corrupt files rebuilt."""

from __future__ import annotations

import numpy as np
import pytest

from grace_bench.data import micro as M


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder and an empty in-process cache (cleared again afterwards)."""
    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    M._build.cache_clear()
    yield tmp_path / "cache"
    M._build.cache_clear()


def _spy_generate(monkeypatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    real = M._generate

    def spy(name: str, split: str):
        calls.append((name, split))
        return real(name, split)

    monkeypatch.setattr(M, "_generate", spy)
    return calls


@pytest.mark.parametrize("name, split", [("micro-v2", "test"), ("micro", "val")])
def test_cached_arrays_equal_freshly_generated_ones(fresh_cache, name, split):
    x, y = M.micro_dataset(name, split).tensors
    path = M.data_cache_path(name, split)
    assert path.is_file() and path.is_relative_to(fresh_cache)
    fresh_x, fresh_y = M._generate(name, split)
    with np.load(path) as f:
        assert np.array_equal(f["x"], fresh_x) and np.array_equal(f["y"], fresh_y)
    assert np.array_equal(x.numpy(), fresh_x) and np.array_equal(y.numpy(), fresh_y)


def test_second_process_reads_the_cache_instead_of_generating(fresh_cache, monkeypatch):
    calls = _spy_generate(monkeypatch)
    first = M.micro_dataset("micro-sketch").tensors
    assert calls == [("micro-sketch", "test")]
    M._build.cache_clear()  # as in a new process: only the disk cache is left
    second = M.micro_dataset("micro-sketch").tensors
    assert calls == [("micro-sketch", "test")]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, second))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-arrays"])
def test_corrupt_cache_file_is_regenerated(fresh_cache, monkeypatch, damage):
    expected = [t.numpy().copy() for t in M.micro_dataset("micro-v2").tensors]
    path = M.data_cache_path("micro-v2", "test")
    if damage == "garbage":
        path.write_bytes(b"not an npz file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    else:
        np.savez(path, x=np.zeros((2, 3, 4, 4), np.float32), y=np.zeros(2, np.int64))
    M._build.cache_clear()
    calls = _spy_generate(monkeypatch)
    x, y = M.micro_dataset("micro-v2").tensors
    assert calls == [("micro-v2", "test")]
    assert np.array_equal(x.numpy(), expected[0]) and np.array_equal(y.numpy(), expected[1])
    with np.load(path) as f:  # and the file is whole again
        assert np.array_equal(f["x"], expected[0])


def test_cache_key_changes_with_the_generator_version(fresh_cache, monkeypatch):
    before = M.data_cache_path("micro-a", "test")
    monkeypatch.setattr(M, "MICRO_DATA_VERSION", M.MICRO_DATA_VERSION + "-next")
    assert M.data_cache_path("micro-a", "test") != before
    assert M.data_cache_path("micro-a", "test") != M.data_cache_path("micro-r", "test")


def test_micro_a_does_not_depend_on_the_blas_thread_count():
    """The reference fit runs on one BLAS thread whatever the pool size (it changed micro-a before)."""
    from threadpoolctl import threadpool_limits

    M._reference_classifier.cache_clear()
    try:
        with threadpool_limits(limits=2):
            coef_two = M._reference_classifier().coef_.copy()
        M._reference_classifier.cache_clear()
        with threadpool_limits(limits=1):
            coef_one = M._reference_classifier().coef_.copy()
    finally:
        M._reference_classifier.cache_clear()
    assert np.array_equal(coef_one, coef_two)
