"""A study in progress (``StudyRun``) and the wall time each stage has taken over every invocation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from grace_bench.errors import UserError
from grace_bench.study.plan import Entry, entries
from grace_bench.study.recipe import StudyRecipe, read_study_json
from grace_bench.utils.atomic import atomic_write_json


@dataclass
class StudyRun:
    """A study in progress: its recipe, its folders and the wall time of each stage."""

    recipe: StudyRecipe
    work: Path
    out: Path
    device: str = "auto"
    progress: bool = True
    command: str = ""
    jobs: int = 1  # fine-tuning runs and evaluations at once (worker processes); numbers do not depend on it
    timings: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def results_dir(self) -> Path:
        return self.work / "results"

    @property
    def geometry_dir(self) -> Path:
        return self.work / "geometry"

    def entries(self) -> list[Entry]:
        return entries(self.recipe, self.work)

    def device_is_cpu(self) -> bool:
        """True for a single CPU process, where ``jobs`` worker processes may share the cores."""
        from grace_bench.runtime import read_launch, resolve_device

        return not read_launch().distributed and resolve_device(self.device).type == "cpu"


def total_times(work: Path) -> dict[str, float]:
    """Seconds spent in each stage over every invocation of this study (``WORK/timings.json``)."""
    path = work / "timings.json"
    if not path.is_file():
        return {}
    totals = read_study_json(path, "delete it (it only holds the wall time of earlier stages)")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in totals.values()):
        raise UserError(f"{path} must map stage names to seconds; delete it (it only holds the wall time of earlier "
                        "stages)")
    return totals


def accumulate_time(work: Path, stage: str, seconds: float) -> None:
    """Add ``seconds`` to ``stage`` in ``WORK/timings.json``."""
    totals = total_times(work)
    totals[stage] = round(totals.get(stage, 0.0) + seconds, 1)
    atomic_write_json(work / "timings.json", totals)
