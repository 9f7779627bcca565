"""Table 6 (main comparison): zero-shot, FT, WiSE-FT (α=0.5), FLYP, TeCoA, FARE, PMG-AFT and GRACE,
mean ± std over seeds of ID, OOD avg, Adv, HM, Robust and Nat-adv, from result files of any suite.

    python analysis/table6_main.py RESULTS_DIR... [--out FILE.md] [--labels-map JSON] [--paper]

``--paper`` adds the paper's ImageNet numbers beside ours (ViT-B/32; they compare with ours only for the
imagenet suite and that architecture).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.tables import TableSpec, build_parser, entry, run_table  # noqa: E402
from grace_bench.results.values import harmonic_mean  # noqa: E402
from grace_bench.study.claims import PAPER_TABLE6 as PAPER_TABLE6_BY_COLUMN  # noqa: E402

SPEC = TableSpec(
    name="table6_main",
    title="Table 6: robust fine-tuning methods",
    order=("zero-shot", "ft", "wise-ft", "flyp", "tecoa", "fare", "pmg-aft", "grace"),
    notes=("wise-ft is the α=0.5 interpolation; other α are labelled `wise-ft α=<a>` and not shown here.",),
)

# The paper's Table 6 (ViT-B/32, ImageNet; percent), written once in grace_bench.study.claims (and checked against
# docs/grace.md "The paper's headline numbers"); here as label -> (ID, OOD avg, Adv, HM) rows. There,
# Adv = mean(APGD-CE robust accuracy at 4/255, natural-adversarial average). FLYP and FARE are not in it.
PAPER_SOURCE = "GRACE paper, Table 6 (ViT-B/32, ImageNet), as listed in docs/grace.md \"The paper's headline numbers\""
PAPER_TABLE6: dict[str, tuple[float, float, float, float]] = {
    label: (row["id"], row["ood_avg"], row["adv"], row["hm"]) for label, row in PAPER_TABLE6_BY_COLUMN.items()
}
PAPER_COLUMNS = ("ID", "OOD avg", "Adv", "HM")
HM_TOLERANCE = 0.05  # percentage points: the paper rounds each column to 2 decimals


def check_paper_hm(table: Mapping[str, tuple[float, float, float, float]] = PAPER_TABLE6,
                   tol: float = HM_TOLERANCE) -> dict[str, float]:
    """Recompute each paper row's HM = 3 / (1/ID + 1/OOD + 1/Adv); raise ValueError when one differs from the
    printed HM by more than ``tol`` (a mistyped number). Returns label -> recomputed HM."""
    out = {}
    for label, (idv, ood, adv, hm) in table.items():
        recomputed = harmonic_mean([idv, ood, adv])
        if recomputed is None or abs(recomputed - hm) > tol:
            raise ValueError(f"paper row {label}: HM {hm} but its columns give {recomputed:.3f} "
                             f"(tolerance {tol}); fix PAPER_TABLE6")
        out[label] = recomputed
    return out


def paper_columns(table: Mapping[str, tuple[float, float, float, float]] = PAPER_TABLE6
                  ) -> list[tuple[str, dict[str, str]]]:
    """Extra Markdown columns ``paper <column>``: label -> the paper's value (percent, as printed)."""
    return [(f"paper {name}", {label: f"{vals[i]:.2f}" for label, vals in table.items()})
            for i, name in enumerate(PAPER_COLUMNS)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(SPEC, __doc__.split("\n\n")[0])
    parser.add_argument("--paper", action="store_true",
                        help="add the paper's ImageNet (ViT-B/32) ID / OOD avg / Adv / HM beside ours")
    args = parser.parse_args(argv)
    extra, notes, extra_json = [], [], None
    if args.paper:
        recomputed = check_paper_hm()
        extra = paper_columns()
        notes = [f"paper columns: {PAPER_SOURCE}; there Adv = mean(APGD-CE at 4/255, Nat-adv). Each paper HM "
                 f"recomputes from its ID, OOD avg and Adv within {HM_TOLERANCE} (checked). They are ImageNet "
                 "numbers: compare them with ours only on the imagenet suite with ViT-B/32."]
        extra_json = {"paper": {"source": PAPER_SOURCE, "units": "percent",
                                "rows": {k: dict(zip(("id", "ood_avg", "adv", "hm"), v)) | {
                                    "hm_recomputed": recomputed[k]} for k, v in PAPER_TABLE6.items()}}}
    run_table(SPEC, args, extra_columns=extra, extra_notes=notes, extra_json=extra_json)
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
