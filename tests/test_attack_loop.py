"""The ``Attack`` interface and the one chunked loop (grace_bench.attacks.loop)."""

from __future__ import annotations

import pytest
import torch

from grace_bench.attacks.chunks import chunk_seed
from grace_bench.attacks.loop import Attack, gather, run_attack, run_chunks
from grace_bench.attacks.pgd_eval import PGDAttack
from grace_bench.attacks.threat import ATTACKS, parse_attack_spec

CPU = torch.device("cpu")


class _Killed(Exception):
    pass


class _Halving(Attack):
    """A toy two-step attack: step ``a`` fools even-seeded examples, ``b`` the first robust one; records calls."""

    prefix = "pgd"
    label = "toy"
    steps = ("a", "b")

    def __init__(self, fail_at: int | None = None) -> None:
        self.config = {"eps": 0.1, "toy": True}
        self.calls: list[tuple[str, int]] = []
        self.fail_at = fail_at

    def run_step(self, step, model, x, y, robust, seed, device):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise _Killed
        self.calls.append((step, seed))
        out = robust.clone()
        if step == "a":
            out[torch.arange(len(out)) % 2 == seed % 2] = False
        elif out.any():
            out[int(torch.nonzero(out)[0])] = False
        return out


def _data(classifier, n=10):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = classifier(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean errors
    return x, y


def test_chunks_run_in_any_split_gather_to_the_single_run(tiny_classifier):
    """Chunk lists given to ``run_chunks`` (e.g. one per process) gather to the flags of one whole run."""
    x, y = _data(tiny_classifier)
    spec = parse_attack_spec("pgd[steps=3]")
    attack = PGDAttack.from_spec(spec, tiny_classifier, x, eps=4 / 255, norm="Linf", seed=5, chunk_size=4, device=CPU)
    whole = run_attack(attack, tiny_classifier, x, y, seed=5, chunk_size=4, key="k", state_dir=None, device=CPU,
                       progress=False, checks=False)
    kw = dict(seed=5, chunk_size=4, key="k", folder=None, device=CPU, progress=False)
    first, _ = run_chunks(attack, tiny_classifier, x, y, [2, 0], **kw)
    second, _ = run_chunks(attack, tiny_classifier, x, y, [1], **kw)
    parts = gather(attack, {**first, **second}, x.shape[0], 4)
    assert torch.equal(parts.robust, whole.robust) and torch.equal(parts.clean, whole.clean)
    assert parts.cascade == whole.cascade and 0 < int(whole.robust.sum()) < int(whole.clean.sum())
    with pytest.raises(ValueError, match="no state"):
        gather(attack, first, x.shape[0], 4)


def test_loop_resumes_at_the_first_unfinished_step_and_flags_only_fall(tiny_classifier, tmp_path):
    x, y = _data(tiny_classifier)
    kw = dict(seed=1, chunk_size=4, key="toy-key", state_dir=tmp_path, device=CPU, progress=False, checks=False)
    fresh = run_attack(_Halving(), tiny_classifier, x, y, **{**kw, "state_dir": None})
    with pytest.raises(_Killed):
        run_attack(_Halving(fail_at=3), tiny_classifier, x, y, **kw)  # chunk 0 done, chunk 1 step a done
    resumed_attack = _Halving()
    resumed = run_attack(resumed_attack, tiny_classifier, x, y, **kw)
    assert resumed_attack.calls == [("b", chunk_seed(1, 1)), ("a", chunk_seed(1, 2)), ("b", chunk_seed(1, 2))]
    assert resumed.timings["resumed_from"] == {"chunk": 1, "attack_index": 1} and resumed.timings["steps_run"] == 3
    assert torch.equal(resumed.robust, fresh.robust) and resumed.cascade == fresh.cascade
    assert not (fresh.robust & ~fresh.clean).any()
    assert fresh.cascade["clean"] >= fresh.cascade["a"] >= fresh.cascade["b"]


def test_attack_kinds_are_registered():
    from grace_bench.attacks.autoattack import AutoAttackCascade

    assert ATTACKS.names() == ["autoattack", "pgd"]
    assert ATTACKS.get("pgd") is PGDAttack and ATTACKS.get("autoattack") is AutoAttackCascade
    assert all(issubclass(ATTACKS.get(k), Attack) for k in ATTACKS.names())
