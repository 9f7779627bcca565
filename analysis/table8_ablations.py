"""Table 8 (GRACE ablations): LoRA-FT alone, + GV only, + LAR-AWP with uniform ranks, + LAR-AWP with the
curvature curriculum, and full GRACE; mean ± std over seeds, from result files of any suite.

    python analysis/table8_ablations.py RESULTS_DIR... [--out FILE.md] [--labels-map JSON]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.tables import TableSpec, build_parser, entry, run_table  # noqa: E402

SPEC = TableSpec(
    name="table8_ablations",
    title="Table 8: GRACE ablations",
    order=("grace-lora-ft", "grace-gv", "grace-awp-uniform", "grace-awp-curriculum", "grace"),
    lead_title="configuration",
    lead={
        "grace-lora-ft": "LoRA-FT alone",
        "grace-gv": "+ GV only",
        "grace-awp-uniform": "+ LAR-AWP, uniform ranks",
        "grace-awp-curriculum": "+ LAR-AWP, curvature curriculum",
        "grace": "full GRACE (LAR-AWP + curriculum + GV)",
    },
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(SPEC, __doc__.split("\n\n")[0]).parse_args(argv)
    run_table(SPEC, args)
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
