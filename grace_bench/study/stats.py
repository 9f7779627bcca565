"""Paired differences between two rows of a study, with two 95% intervals, and the three-valued verdict.

Two rows of a study share their seeds and their test images, so every comparison is paired.

- **Seeds (t-interval).** ``d_s = metric(A, seed s) − metric(B, seed s)`` for every seed both rows ran (a row
  that does not depend on the seed, like zero-shot, is paired with every seed of the other). The interval is
  ``mean(d) ± t_{0.975, n−1} · sd(d) / √n`` (Student t, ``n − 1`` degrees of freedom). It measures how much the
  difference moves with the training seed, on this test set. It needs two seeds or more.
- **Images (bootstrap).** Each replicate ``b`` resamples the images of every evaluation set (each dataset's
  test images, and the attacked subset of the ID set) with replacement, independently per set, with the same
  indices for both rows and for every seed (they all saw the same test set). The metric is recomputed from the
  resampled per-image flags (composite metrics too: OOD avg as the mean over the OOD sets, Adv as the mean of
  robust and Nat-adv, HM as their harmonic mean), and ``D_b = mean over seeds of d_s(b)``. The interval is the
  2.5th and 97.5th percentiles of ``D_b`` over ``BOOTSTRAP_REPLICATES`` replicates drawn from
  ``BOOTSTRAP_SEED``. It measures how much the difference moves with the test images, for these trained
  models. It needs per-image flags (result files written before they were stored have none).

``verdict`` combines them conservatively (see ``grace_bench.study.claims``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

LEVEL = 0.95
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 20260
HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED, SINGLE_SEED = (
    "holds", "does not hold", "inconclusive", "not measured", "single seed")
NO_IMAGES = "no per-image data"
CACHE_MAX_ENTRIES = 20_000_000  # resampling counts kept in memory per set (80 MB); larger sets are redrawn


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


@dataclass(frozen=True)
class Interval:
    """A closed interval ``[lo, hi]``."""

    lo: float
    hi: float

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        return f"[{self.lo * scale:+.{digits}f}, {self.hi * scale:+.{digits}f}]"


def t_interval(diffs: Sequence[float], level: float = LEVEL) -> Interval | None:
    """The Student-t interval of the mean of ``diffs``; ``None`` with fewer than two values."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return None
    half = t_quantile(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return Interval(float(d.mean() - half), float(d.mean() + half))


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> Interval:
    """The central ``level`` percentile interval of bootstrap ``replicates``."""
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(lo), float(hi))


# ------------------------------------------------------------------------------------------ per-image data


@dataclass
class ImageFlags:
    """The per-image correctness of one evaluated checkpoint.

    ``clean[name]``: top-1 flags of dataset ``name`` (image order of its result file); ``roles[name]``: its role
    (``id``, ``ood``, ``nat-adv``); ``robust``: the robust flags of the ID dataset's attacked subset and
    ``robust_key``: what identifies that subset (two checkpoints pair images only when their keys are equal).
    """

    clean: dict[str, np.ndarray]
    roles: dict[str, str]
    id_name: str
    robust: np.ndarray | None = None
    robust_key: str = ""

    def sets(self) -> dict[str, np.ndarray]:
        """Every evaluation set by its key: ``clean:<name>:<n>`` and ``robust:<key>:<n>``."""
        out = {f"clean:{name}:{len(f)}": f for name, f in self.clean.items()}
        if self.robust is not None:
            out[f"robust:{self.robust_key}:{len(self.robust)}"] = self.robust
        return out


def _harmonic(values: Sequence[Any]) -> Any:
    """The paper's HM of fractions (floats or arrays of replicates); 0 where any value is 0 or below."""
    arrs = [np.asarray(v, dtype=float) for v in values]
    positive = np.all([a > 0 for a in arrs], axis=0)
    safe = [np.where(positive, a, 1.0) for a in arrs]
    hm = np.where(positive, len(arrs) / sum(1.0 / a for a in safe), 0.0)
    return hm if hm.ndim else float(hm)


def metric_from_sets(flags: ImageFlags, accuracy: Mapping[str, Any], key: str) -> Any:
    """``key`` (``id``, ``ood_avg``, ``nat_adv``, ``autoattack``, ``adv``, ``hm`` or ``top1/<dataset>``) from the
    accuracy of every set (``accuracy[set key]``: a float, or an array of replicates); ``None`` when missing.

    The same definitions as ``grace_bench.eval.metrics.aggregates``."""
    keys = {name: f"clean:{name}:{len(f)}" for name, f in flags.clean.items()}

    def role_mean(role: str) -> Any:
        parts = [accuracy[keys[n]] for n, r in flags.roles.items() if r == role and n in keys]
        return sum(parts) / len(parts) if parts else None

    if key.startswith("top1/"):
        name = key.split("/", 1)[1]
        return accuracy[keys[name]] if name in keys else None
    idv = accuracy[keys[flags.id_name]] if flags.id_name in keys else None
    ood, nat = role_mean("ood"), role_mean("nat-adv")
    robust = accuracy[f"robust:{flags.robust_key}:{len(flags.robust)}"] if flags.robust is not None else None
    adv = None if robust is None or nat is None else (robust + nat) / 2
    if key == "hm":
        return None if any(v is None for v in (idv, ood, adv)) else _harmonic([idv, ood, adv])
    return {"id": idv, "ood_avg": ood, "nat_adv": nat, "autoattack": robust, "adv": adv}.get(key)


def point_metric(flags: ImageFlags, key: str) -> float | None:
    """``key`` computed from the full (not resampled) flags."""
    value = metric_from_sets(flags, {k: float(f.mean()) for k, f in flags.sets().items()}, key)
    return None if value is None else float(value)


@dataclass
class Bootstrap:
    """Resampled accuracies of every evaluation set: one resampling per set, shared by every checkpoint.

    The indices of set ``k`` come from a generator seeded with ``(seed, crc32(k))``, so they do not depend on
    which other sets or checkpoints the report holds.
    """

    replicates: int = BOOTSTRAP_REPLICATES
    seed: int = BOOTSTRAP_SEED
    chunk: int = 200
    _weights: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    _done: dict[int, tuple[ImageFlags, dict[str, np.ndarray]]] = field(default_factory=dict, repr=False)

    def counts(self, key: str, n: int) -> list[np.ndarray]:
        """Per chunk of replicates: how often each image is drawn (replicates × n)."""
        if key in self._weights:
            return self._weights[key]
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
        chunks = []
        for start in range(0, self.replicates, self.chunk):
            rows = min(self.chunk, self.replicates - start)
            draws = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
            chunks.append(np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float32))
        if self.replicates * n <= CACHE_MAX_ENTRIES:
            self._weights[key] = chunks
        return chunks

    def accuracies(self, flags: ImageFlags) -> dict[str, np.ndarray]:
        """For every set of ``flags``: its accuracy in each replicate (computed once per flags object)."""
        if id(flags) in self._done:
            return self._done[id(flags)][1]
        out = {}
        for key, f in flags.sets().items():
            vec = f.astype(np.float64)
            out[key] = np.concatenate([c @ vec for c in self.counts(key, len(f))]) / len(f)
        self._done[id(flags)] = (flags, out)  # the flags are kept so that their id is not reused
        return out

    def metric(self, flags: ImageFlags, key: str) -> np.ndarray | None:
        value = metric_from_sets(flags, self.accuracies(flags), key)
        return None if value is None else np.asarray(value, dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"replicates": self.replicates, "seed": self.seed, "level": LEVEL,
                "resampling": "images of each evaluation set, independently per set, shared by both rows and "
                              "every seed; percentile interval of the mean paired difference"}


# -------------------------------------------------------------------------------------------- comparisons


@dataclass
class Row:
    """One row of the study for the statistics: its value of each metric per seed and, where stored, its
    per-image flags per seed. ``fixed``: the row does not depend on the seed (zero-shot); ``group``: its
    table (main, recent, lora, ablation)."""

    label: str
    values: dict[int, dict[str, float | None]]
    flags: dict[int, ImageFlags | None] = field(default_factory=dict)
    fixed: bool = False
    group: str = "main"


@dataclass
class PairedDiff:
    """``A − B`` on one metric, per shared seed, with the t-interval over seeds and the image bootstrap."""

    metric: str
    a: str
    b: str
    seeds: list[int]
    diffs: list[float]
    mean: float
    t: Interval | None
    boot: Interval | None
    boot_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """``+1.23 pts, t [..], boot [..]`` in points."""
        t = self.t.text(100) if self.t else "— (one seed)"
        boot = self.boot.text(100) if self.boot else f"— ({self.boot_note})"
        return f"{100 * self.mean:+.2f} pts; seeds {t}; images {boot}"


def _pairs(a: Row, b: Row) -> list[tuple[int, int, int]]:
    """(seed, seed of a, seed of b) for every seed both rows have (a fixed row pairs with every seed)."""
    if a.fixed and b.fixed:
        return [(min(a.values), min(a.values), min(b.values))] if a.values and b.values else []
    if a.fixed and a.values:
        only = min(a.values)
        return [(s, only, s) for s in sorted(b.values)]
    if b.fixed and b.values:
        only = min(b.values)
        return [(s, s, only) for s in sorted(a.values)]
    return [(s, s, s) for s in sorted(set(a.values) & set(b.values))]


def paired_diff(a: Row, b: Row, metric: str, boot: Bootstrap | None = None) -> PairedDiff | None:
    """``a − b`` on ``metric`` over their shared seeds; ``None`` when no seed has both values."""
    pairs = [(s, sa, sb) for s, sa, sb in _pairs(a, b)
             if a.values[sa].get(metric) is not None and b.values[sb].get(metric) is not None]
    if not pairs:
        return None
    diffs = [a.values[sa][metric] - b.values[sb][metric] for _, sa, sb in pairs]
    interval, note = None, NO_IMAGES
    if boot is not None:
        interval, note = _boot_interval(a, b, pairs, metric, boot)
    return PairedDiff(metric, a.label, b.label, [s for s, _, _ in pairs], diffs, float(np.mean(diffs)),
                      t_interval(diffs), interval, "" if interval else note)


def _boot_interval(a: Row, b: Row, pairs: list[tuple[int, int, int]], metric: str, boot: Bootstrap
                   ) -> tuple[Interval | None, str]:
    total = None
    for _, sa, sb in pairs:
        fa, fb = a.flags.get(sa), b.flags.get(sb)
        if fa is None or fb is None:
            return None, NO_IMAGES
        if fa.sets().keys() != fb.sets().keys():
            return None, "rows evaluated on different images"
        for flags, row, seed in ((fa, a, sa), (fb, b, sb)):
            point, stored = point_metric(flags, metric), row.values[seed].get(metric)
            if point is None or abs(point - stored) > 1e-9:
                return None, f"per-image data of {row.label} does not match its summary"
        d = boot.metric(fa, metric) - boot.metric(fb, metric)
        total = d if total is None else total + d
    return percentile_interval(total / len(pairs)), ""


def verdict(interval: Interval | None, c: float, *, strict: bool = False) -> str:
    """``holds`` when all of ``interval`` meets ``d ≥ c`` (``d > c`` if ``strict``), ``does not hold`` when none
    of it does, ``inconclusive`` when it straddles ``c``; ``single seed`` without an interval."""
    if interval is None:
        return SINGLE_SEED
    meets_lo = interval.lo > c if strict else interval.lo >= c
    misses_hi = interval.hi <= c if strict else interval.hi < c
    return HOLDS if meets_lo else FAILS if misses_hi else INCONCLUSIVE


def combined_verdict(diff: PairedDiff | None, c: float, *, strict: bool = False) -> str:
    """The verdict of ``diff`` against ``d ≥ c``: definite only when every interval available gives the same
    definite verdict; ``inconclusive`` when they disagree or either straddles ``c``. Without a t-interval (one
    seed) the verdict is ``single seed``, whatever the bootstrap says."""
    if diff is None:
        return NOT_MEASURED
    by_seed = verdict(diff.t, c, strict=strict)
    if by_seed == SINGLE_SEED or diff.boot is None:
        return by_seed
    return by_seed if verdict(diff.boot, c, strict=strict) == by_seed else INCONCLUSIVE


def all_of(verdicts: Sequence[str]) -> str:
    """A conjunction of claims: holds when all hold, does not hold when one does not, else the weakest."""
    if not verdicts or NOT_MEASURED in verdicts:
        return NOT_MEASURED
    if FAILS in verdicts:
        return FAILS
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE if INCONCLUSIVE in verdicts else SINGLE_SEED
