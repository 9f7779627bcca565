"""The evaluation config (what `grace-bench eval` was asked to do); ``None`` fields take the suite's defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class EvalConfig:
    """Everything that determines an evaluation run; ``None`` means "the suite's default"."""

    checkpoint: str | None = None  # None: the suite's default model (micro: the shipped micro-CLIP)
    suite: str | None = None
    data_root: Path | None = None
    data_layout: str = "auto"  # ImageNet family: auto (image folders, else wds_<name> shards), folders or wds
    base: str | None = None
    trust_pickle: bool = False
    attack: str | None = None
    eps: str | None = None  # one ε or a comma-separated list ("2/255,4/255"): one result per ε
    norm: str = "Linf"
    n_adv: int | None = None
    adv_datasets: list[str] | None = None
    datasets: list[str] | None = None
    out: Path = Path("results")
    limit: int | None = None
    precision: str = "fp32"
    batch_size: int = 256
    adv_batch_size: int = 250
    device: str = "auto"
    workers: int | None = None  # None: eval.batching.auto_workers (0 for in-memory suites, else cores - 1)
    allow_empty_classes: bool = False  # image folders: accept class folders without a readable image
    templates_file: Path | None = None
    classnames_file: Path | None = None
    seed: int | None = None  # None: the protocol's seed (0 for every preset)
    protocol: str | None = None  # a preset of grace_bench.eval.protocols (None: grace, the suite's defaults)
    label: str | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

