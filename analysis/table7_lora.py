"""Table 7 (parameter-efficient tuning): FT-LoRA, TeCoA-LoRA and GRACE (itself LoRA-based), with full
fine-tuning FT and TeCoA for reference; mean ± std over seeds, from result files of any suite.

    python analysis/table7_lora.py RESULTS_DIR... [--out FILE.md] [--labels-map JSON]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.tables import TableSpec, build_parser, entry, run_table  # noqa: E402

SPEC = TableSpec(
    name="table7_lora",
    title="Table 7: LoRA variants",
    order=("ft-lora", "tecoa-lora", "grace", "ft", "tecoa"),
    lead_title="tuning",
    lead={"ft-lora": "LoRA", "tecoa-lora": "LoRA", "grace": "LoRA (GRACE)", "ft": "full (reference)",
          "tecoa": "full (reference)"},
    notes=("ft and tecoa fine-tune every weight of the trained tower; they are shown for reference.",),
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(SPEC, __doc__.split("\n\n")[0]).parse_args(argv)
    run_table(SPEC, args)
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
