"""The paper's claims, tested one by one on paired differences between the study's rows.

Each claim states its criterion up front as ``d ≥ c`` on a paired difference ``d`` (GRACE minus another row,
per seed; see ``grace_bench.study.stats``), and its verdict is computed from two 95% intervals of the mean of
``d``: a Student-t interval over seeds and a bootstrap interval over test images.

The rule:

- **holds** when both intervals lie wholly at or above ``c``;
- **does not hold** when both lie wholly below ``c``;
- **inconclusive** when either interval straddles ``c``, or the two disagree;
- **single seed** when fewer than two seeds were paired: no interval over seeds exists, so no verdict is
  given (the point estimate is still shown); this is the case of the geometry claims, measured on the first
  seed only;
- **not measured** when a row the claim needs was not run.

Why both intervals: they measure different sources of chance (which seed trained the models; which images
make up the test set), and a difference that is real must survive both, so a definite verdict needs them to
agree. When the result files carry no per-image flags (written before they were stored), the bootstrap is
missing and the t-interval alone decides. A claim about several rows (Adv above FT *and* WiSE-FT) holds when
every part holds and does not hold when one part does not. "Best HM of all methods" holds when GRACE's HM
exceeds every other main and recent row with the whole interval above 0, does not hold when some row beats
GRACE with the whole interval below 0, and is inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from grace_bench.study.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_MEASURED,
    SINGLE_SEED,
    Bootstrap,
    Interval,
    PairedDiff,
    Row,
    all_of,
    combined_verdict,
    paired_diff,
)

# docs/grace.md, Table 6 (ViT-B/32, ImageNet; %), and the paper's geometric claims.
PAPER_TABLE6 = {
    "zero-shot": {"id": 63.35, "ood_avg": 57.44, "adv": 8.82, "hm": 20.46},
    "ft": {"id": 74.86, "ood_avg": 56.59, "adv": 8.95, "hm": 21.01},
    "wise-ft": {"id": 70.20, "ood_avg": 58.05, "adv": 9.04, "hm": 21.11},
    "tecoa": {"id": 52.54, "ood_avg": 37.96, "adv": 17.48, "hm": 29.24},
    "pmg-aft": {"id": 58.20, "ood_avg": 43.40, "adv": 19.57, "hm": 32.85},
    "grace": {"id": 74.21, "ood_avg": 57.01, "adv": 22.44, "hm": 39.69},
}
ID_TOLERANCE_PTS = 1.0  # "close to": within 1 percentage point (the paper's gaps are 0.65 and 0.43)
ADV_MARGIN_PTS = 5.0  # "far above": at least 5 points (the paper's margins are 13.5 and 13.4)
LAMBDA_RATIO = 0.6  # "about half": at most 0.6× (the paper: ~0.5×)
CONTENDER_GROUPS = ("main", "recent")  # the rows "best HM of all methods" is measured against
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, SINGLE_SEED, NOT_MEASURED)


@dataclass
class Claim:
    """One claim: what the paper says, the criterion, what we measured, its intervals and the verdict."""

    claim: str
    paper: str
    criterion: str
    measured: str
    verdict: str  # one of VERDICTS
    seeds_ci: str = ""  # 95% t-interval(s) over seeds, in points
    images_ci: str = ""  # 95% bootstrap interval(s) over test images, in points
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ci(interval: Interval | None, note: str, scale: float = 100) -> str:
    return interval.text(scale) if interval else f"— ({note})"


def _claim(claim: str, paper: str, criterion: str, parts: Sequence[tuple[str, PairedDiff | None]],
           verdicts: Sequence[str], scale: float = 100, unit: str = " pts", images_apply: bool = True) -> Claim:
    """A claim from its paired differences (``name``, diff) and the verdict of each."""
    if not parts or any(d is None for _, d in parts):
        return Claim(claim, paper, criterion, "", NOT_MEASURED)
    prefix = len(parts) > 1
    measured, seeds, images = [], [], []
    for name, d in parts:
        tag = f"vs {name}: " if prefix else ""
        n = f"{len(d.seeds)} seed{'s' if len(d.seeds) > 1 else ''}"
        measured.append(f"vs {name} {scale * d.mean:+.2f}{unit} ({n})" if prefix else
                        f"{d.a} − {d.b} = {scale * d.mean:+.2f}{unit} ({n})")
        seeds.append(tag + _ci(d.t, "one seed", scale))
        images.append(tag + (_ci(d.boot, d.boot_note, scale) if images_apply else "n/a (not a per-image metric)"))
    return Claim(claim, paper, criterion, "; ".join(measured), all_of(list(verdicts)), "; ".join(seeds),
                 "; ".join(images), [d.to_dict() for _, d in parts])


def _diff(rows: Mapping[str, Row], a: str, b: str, metric: str, boot: Bootstrap | None) -> PairedDiff | None:
    return paired_diff(rows[a], rows[b], metric, boot) if a in rows and b in rows else None


def _threshold_claim(rows, boot, claim: str, paper: str, ref: str, metric: str, c_pts: float,
                     criterion: str) -> Claim:
    d = _diff(rows, "grace", ref, metric, boot)
    return _claim(claim, paper, criterion, [(ref, d)], [combined_verdict(d, c_pts / 100)])


def _sign(interval: Interval | None) -> str:
    """Above 0 (GRACE wins), below 0 (GRACE loses), straddling, or no interval."""
    if interval is None:
        return SINGLE_SEED
    return HOLDS if interval.lo > 0 else FAILS if interval.hi < 0 else INCONCLUSIVE


def _beats(d: PairedDiff) -> str:
    """GRACE − other on HM: wins / loses only when both intervals say so (the t-interval alone without flags)."""
    by_seed = _sign(d.t)
    if by_seed == SINGLE_SEED or d.boot is None:
        return by_seed
    return by_seed if _sign(d.boot) == by_seed else INCONCLUSIVE


def best_hm_claim(rows: Mapping[str, Row], boot: Bootstrap | None) -> Claim:
    """GRACE against every other contender row (groups ``CONTENDER_GROUPS``, GRACE variants aside) on HM."""
    name, paper = "best HM of all methods", "39.69, next PMG-AFT 32.85"
    criterion = "GRACE − each other main/recent row > 0 (HM)"
    others = [label for label, r in rows.items() if r.group in CONTENDER_GROUPS and not label.startswith("grace")]
    if "grace" not in rows or not others:
        return Claim(name, paper, criterion, "", NOT_MEASURED)
    parts = [(label, paired_diff(rows["grace"], rows[label], "hm", boot)) for label in others]
    parts = [(label, d) for label, d in parts if d is not None]
    if not parts:  # no other row shares an HM value with GRACE
        return Claim(name, paper, criterion, "", NOT_MEASURED)
    signs = [_beats(d) for _, d in parts]
    if FAILS in signs:
        verdict = FAILS
    elif all(s == HOLDS for s in signs):
        verdict = HOLDS
    else:
        verdict = INCONCLUSIVE if INCONCLUSIVE in signs else SINGLE_SEED
    c = _claim(name, paper, criterion, parts, [HOLDS])
    c.verdict = verdict
    return c


def accuracy_claims(rows: Mapping[str, Row], boot: Bootstrap | None = None) -> list[Claim]:
    """ID, OOD, Adv and HM claims from the study's rows (values are fractions; differences shown in points)."""
    claims = [
        _threshold_claim(rows, boot, "ID accuracy close to FT", "74.21 vs 74.86 (−0.65)", "ft", "id",
                         -ID_TOLERANCE_PTS, f"GRACE − ft ≥ −{ID_TOLERANCE_PTS:g} pt (ID)"),
        _threshold_claim(rows, boot, "OOD accuracy close to zero-shot", "57.01 vs 57.44 (−0.43)", "zero-shot",
                         "ood_avg", -ID_TOLERANCE_PTS, f"GRACE − zero-shot ≥ −{ID_TOLERANCE_PTS:g} pt (OOD avg)"),
    ]
    parts = [(ref, _diff(rows, "grace", ref, "adv", boot)) for ref in ("ft", "wise-ft")]
    claims.append(_claim("Adv far above FT and WiSE-FT", "22.44 vs 8.95 / 9.04 (+13.5 / +13.4)",
                         f"GRACE − each ≥ {ADV_MARGIN_PTS:g} pts (Adv)", parts,
                         [combined_verdict(d, ADV_MARGIN_PTS / 100) for _, d in parts]))
    claims.append(_threshold_claim(rows, boot, "Adv at least TeCoA's", "22.44 vs 17.48 (+4.96)", "tecoa", "adv", 0.0,
                                   "GRACE − tecoa ≥ 0 (Adv)"))
    claims.append(best_hm_claim(rows, boot))
    return claims


def _geo_row(label: str, geo: Mapping[str, Mapping[str, Any]], geo_seeds: Mapping[str, Mapping[int, Mapping]] | None
             ) -> Row | None:
    """A geometry row: per seed where given (``geo_seeds``), else the first seed's values as one seed."""
    per_seed = (geo_seeds or {}).get(label) or ({0: geo[label]} if label in geo else None)
    if not per_seed:
        return None
    values = {}
    for seed, vals in per_seed.items():
        v = {k: (None if x is None else float(x)) for k, x in vals.items()}
        lam = v.get("lambda_max")
        v["log_lambda_max"] = math.log(lam) if lam is not None and lam > 0 else None
        values[int(seed)] = v
    return Row(label, values)


def _geo_claim(rows: Mapping[str, Row | None], a: str, b: str, key: str, claim: str, paper: str, criterion: str,
               fmt: str, *, strict: bool) -> Claim:
    """``a − b ≥ 0`` (``> 0`` if ``strict``) on geometry column ``key``; the point values are shown as measured."""
    ra, rb = rows.get(a), rows.get(b)
    d = paired_diff(ra, rb, key) if ra is not None and rb is not None else None
    if d is None:
        return Claim(claim, paper, criterion, "", NOT_MEASURED)
    out = _claim(claim, paper, criterion, [(b, d)], [combined_verdict(d, 0.0, strict=strict)], scale=1, unit="",
                 images_apply=False)
    seed = d.seeds[0]
    meets = "meets" if (d.mean > 0 if strict else d.mean >= 0) else "misses"
    which = "the point estimate" if len(d.seeds) == 1 else f"the mean over {len(d.seeds)} paired seeds"
    out.measured = (f"{a} {format(ra.values[seed][key], fmt)}, {b} {format(rb.values[seed][key], fmt)} "
                    f"(seed {seed}; {which} {meets} the criterion)")
    return out


def geometry_claims(geo: Mapping[str, Mapping[str, Any]],
                    geo_seeds: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None) -> list[Claim]:
    """Flatness, feature-invariance and drift claims from ``geo[label][column]`` (first seed), or from
    ``geo_seeds[label][seed][column]`` where geometry ran on several seeds."""
    labels = set(geo) | set(geo_seeds or {})
    rows = {label: _geo_row(label, geo, geo_seeds) for label in labels}
    log_c = -math.log(LAMBDA_RATIO)
    flat = [(ref, paired_diff(rows[ref], rows["grace"], "log_lambda_max"))
            for ref in ("ft", "wise-ft") if rows.get(ref) and rows.get("grace")]
    name, paper = "flatter minimum: λ_max about half of FT and WiSE-FT", "≈ 0.5×"
    if len(flat) == 2 and all(d is not None for _, d in flat):
        c = _claim(name, paper, f"log(λ_ref / λ_GRACE) ≥ log(1/{LAMBDA_RATIO:g}) for FT and WiSE-FT", flat,
                   [combined_verdict(d, log_c) for _, d in flat], scale=1, unit="", images_apply=False)
        seed = flat[0][1].seeds[0]
        lam = {label: rows[label].values[seed]["lambda_max"] for label in ("grace", "ft", "wise-ft")}
        c.measured = (f"λ_max GRACE {lam['grace']:.3g}, FT {lam['ft']:.3g}, WiSE-FT {lam['wise-ft']:.3g} (ratios "
                      f"{lam['grace'] / lam['ft']:.2f}, {lam['grace'] / lam['wise-ft']:.2f}; seed {seed} of "
                      f"{len(flat[0][1].seeds)} paired)")
        claims = [c]
    else:
        claims = [Claim(name, paper, f"GRACE/FT and GRACE/WiSE-FT ≤ {LAMBDA_RATIO:g}", "", NOT_MEASURED)]
    claims.append(_geo_claim(rows, "tecoa", "grace", "weight_drift", "small weight drift", "0.09 vs TeCoA 0.47",
                             "TeCoA drift − GRACE drift > 0", ".3g", strict=True))
    for key, title, paper in (("centroid_id_ood", "class-centroid cosine ID→OOD", "0.89"),
                              ("centroid_id_adv", "class-centroid cosine ID→Adv", "0.85")):
        claims.append(_geo_claim(rows, "grace", "ft", key, f"{title} preserved", f"GRACE {paper}", "GRACE − FT ≥ 0",
                                 ".3f", strict=False))
    claims.append(_geo_claim(rows, "ft", "grace", "delta_lid_ood", "small ΔLID under shift", "≤ 2.5 vs > 8 for FT",
                             "FT ΔLID − GRACE ΔLID > 0", ".2f", strict=True))
    return claims


def claims_markdown(claims: list[Claim]) -> str:
    """A Markdown table of claims with both intervals and the verdict."""
    lines = ["| claim | paper (ImageNet) | criterion | measured here (mean paired difference) | 95% CI over seeds "
             "(t) | 95% CI over test images (bootstrap) | verdict |", "|---|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.claim} | {c.paper} | {c.criterion or '—'} | {c.measured or '—'} | {c.seeds_ci or '—'} "
                     f"| {c.images_ci or '—'} | **{c.verdict}** |")
    return "\n".join(lines)
