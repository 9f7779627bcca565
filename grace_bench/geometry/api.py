"""The geometry library: ``run`` one diagnostic on a loaded model, ``compute`` it into a result file (resumable).

    from grace_bench.geometry import run, compute, HessianConfig
    result = run("hessian", clip, None, HessianConfig(n=32, top_k=3))   # data: loaded from the config
    result.record["lambda_max"], result.arrays["eigenvalues"]
    path, fresh = compute("weights", clip, WeightsConfig(), out="results", ref="micro")

The record is the JSON object of ``OUT/geometry-<kind>-<fp12>.json`` (same keys as files written by the
CLI); arrays go to the NPZ next to it. The resume hash covers only what can change a number: the model
fingerprint, the reference, the kind and ``config.numeric()`` (data subset and numeric settings, seed),
never the label, device, output folder, thread count or the order of flags.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grace_bench.errors import UserError
from grace_bench.geometry.config import DataConfig, GeometryConfig
from grace_bench.geometry.registry import get_kind

GEOMETRY_SCHEMA = "grace-bench/geometry/v1"
HASH_SCHEME = 2  # 1: the hash covered the raw command line (files without ``hash_scheme``)


@dataclass
class GeometryData:
    """A fixed data subset of a suite's dataset, as CPU batches, with its record entry ``info``."""

    suite: Any
    spec: Any
    batches: list
    info: dict[str, Any]


@dataclass
class GeometryInputs:
    """What a diagnostic's run function receives."""

    clip: Any
    config: GeometryConfig
    data: GeometryData | None = None
    ref: Any = None
    device: Any = "cpu"
    progress: bool = False
    state_dir: Path | None = None  # where a resumable diagnostic keeps partial work (None: no resume)
    settings_hash: str = ""


@dataclass
class GeometryResult:
    """A finished diagnostic: the JSON-able ``record`` and the NPZ ``arrays``."""

    record: dict[str, Any]
    arrays: dict[str, Any] = field(default_factory=dict)


def settings_hash(kind: str, clip, config: GeometryConfig, ref_spec: str | None) -> str:
    """Hash of the settings that can change a number of ``kind`` on ``clip``."""
    from grace_bench.utils.hashing import config_hash

    return config_hash({"kind": kind, "checkpoint": clip.fingerprint(), "base": getattr(clip, "base_spec", None),
                        "ref": ref_spec if config.ref_use() != "never" else None, "settings": config.numeric()})


def load_data(clip, config: DataConfig) -> GeometryData:
    """The fixed subset ``config`` describes (suite, dataset, split, n, batch size, seed) for ``clip``."""
    from grace_bench.data.suites import DataContext, get_suite
    from grace_bench.eval.run import default_suite_for
    from grace_bench.geometry.losses import batches_fingerprint, fixed_subset

    suite = get_suite(config.suite or default_suite_for(clip))
    spec = suite.dataset(config.dataset) if config.dataset else _first_id(suite)
    root = Path(config.data_root) if config.data_root else None
    ctx = DataContext(root=root, preprocess=clip.preprocess, image_size=clip.image_size)
    dataset = suite.train_split(ctx, "train") if config.split == "train" else spec.load(ctx)
    batches = fixed_subset(dataset, config.n, config.batch_size, seed=config.seed)
    info = {"suite": suite.name, "dataset": spec.name, "split": config.split, "n": sum(len(y) for _, y in batches),
            "fingerprint": batches_fingerprint(batches)}
    return GeometryData(suite, spec, batches, info)


def _first_id(suite):
    ids = suite.by_role("id")
    if not ids:
        raise UserError(f"suite '{suite.name}' has no ID dataset; name the dataset to use")
    return ids[0]


def _model_device(clip):
    from grace_bench.geometry.losses import model_device

    return model_device(clip.model)


def run(kind: str, clip, data: GeometryData | None = None, config: GeometryConfig | None = None, *, ref=None,
        ref_spec: str | None = None, label: str | None = None, progress: bool = False,
        state_dir: Path | None = None) -> GeometryResult:
    """Run diagnostic ``kind`` on ``clip`` (a loaded ``ClipModel``) and return its record and arrays.

    ``data``: a ``GeometryData`` (default: loaded from ``config``); ``config``: the kind's config class
    (default: its defaults); ``ref``: a loaded reference ``ClipModel`` where the kind uses one (``ref_spec``:
    the spec to record for it, default ``ref.spec``); ``state_dir``: where a resumable kind keeps partial
    work. The model stays on its device.
    """
    spec = get_kind(kind)
    config = config if config is not None else spec.config()
    if not isinstance(config, spec.config):
        raise TypeError(f"config of geometry kind '{kind}' must be a {spec.config.__name__}, got "
                        f"{type(config).__name__}")
    config.validate()
    if config.ref_use() == "required" and ref is None:
        raise UserError(f"geometry {kind} needs a reference model (ref); pass e.g. the zero-shot checkpoint")
    if config.NEEDS_DATA and data is None:
        data = load_data(clip, config)
    device = _model_device(clip)
    ref_spec = ref_spec or getattr(ref, "spec", None)
    h = settings_hash(kind, clip, config, ref_spec)
    t0 = time.perf_counter()
    inputs = GeometryInputs(clip=clip, config=config, data=data, ref=ref, device=device, progress=progress,
                            state_dir=state_dir, settings_hash=h)
    payload, arrays = spec.run(inputs)
    record = {
        "schema": GEOMETRY_SCHEMA,
        "kind": kind,
        "checkpoint": {"spec": clip.spec, "fingerprint": clip.fingerprint(), "arch": clip.arch, "base": clip.base_spec},
        "label": label or clip.spec,
        "config": {"kind": kind, "ref": ref_spec, **config.to_dict()},
        "config_hash": h,
        "hash_scheme": HASH_SCHEME,
        "seed": config.seed,
        "device": str(device),
        **payload,
        "wall_time_s": time.perf_counter() - t0,
    }
    return GeometryResult(record, arrays)


def result_path(out: str | Path, kind: str, clip) -> Path:
    """``OUT/geometry-<kind>-<fp12>.json``."""
    return Path(out) / f"geometry-{kind}-{clip.fingerprint()[:12]}.json"


# how messages name the run parameters; the CLI passes its flags instead
LIBRARY_NAMES = {"force": "force=True", "out": "out folder", "ref": "ref (a reference checkpoint)"}


def up_to_date(path: Path, expected_hash: str, force: bool = False, names: dict[str, str] | None = None) -> bool:
    """True when ``path`` holds a finished result with ``expected_hash``; ``UserError`` for one with other settings.

    ``names``: how messages call ``force`` and ``out`` (default ``LIBRARY_NAMES``).
    """
    names = {**LIBRARY_NAMES, **(names or {})}
    if force or not path.exists():
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise UserError(f"{path} is not a readable result ({type(exc).__name__}); delete it or pass "
                        f"{names['force']} to recompute it") from exc
    if not isinstance(old, dict):
        raise UserError(f"{path} holds a JSON {type(old).__name__}, not a result; delete it or pass {names['force']}")
    if old.get("config_hash") == expected_hash:
        return True
    if old.get("hash_scheme") is None:
        raise UserError(f"{path} was written by an older grace-bench whose settings hash differs; pass "
                        f"{names['force']} to recompute it")
    raise UserError(f"{path} holds a result with other settings; pass {names['force']} to overwrite it or use another "
                    f"{names['out']}")


def write_result(path: Path, result: GeometryResult) -> None:
    """Write the NPZ, then the JSON (atomically; the JSON marks the result complete)."""
    import numpy as np

    from grace_bench.results.writer import write_record
    from grace_bench.utils.atomic import atomic_path

    if result.arrays:
        with atomic_path(path.with_suffix(".npz")) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **result.arrays)
    result.record.update(write_record(path, result.record, kind="geometry"))  # stamps schema, versions, time


def compute(kind: str, clip, config: GeometryConfig | None = None, out: str | Path = "results", *,
            ref: Any = None, data: GeometryData | None = None, label: str | None = None, force: bool = False,
            progress: bool = False, trust_pickle: bool = False,
            names: dict[str, str] | None = None) -> tuple[Path, GeometryResult | None]:
    """``run`` into ``OUT/geometry-<kind>-<fp12>.json`` unless that file already holds the same settings.

    ``ref``: a checkpoint spec or a loaded ``ClipModel`` (default: the checkpoint's base model); it is
    loaded only when the kind uses it and the result must be computed. Returns (path, result), result
    None when the file was up to date. ``names``: how messages call ``force``, ``out`` and ``ref``.
    """
    names = {**LIBRARY_NAMES, **(names or {})}
    spec = get_kind(kind)
    config = config if config is not None else spec.config()
    config.validate()
    ref_spec = ref if isinstance(ref, str) or ref is None else ref.spec
    ref_spec = ref_spec or clip.base_spec
    if config.ref_use() == "required" and ref_spec is None:
        raise UserError(f"geometry {kind} needs a reference model; pass {names['ref']}, e.g. the zero-shot "
                        "checkpoint")
    path = result_path(out, kind, clip)
    h = settings_hash(kind, clip, config, ref_spec)
    if up_to_date(path, h, force, names):
        return path, None
    ref_clip = None
    if config.ref_use() != "never" and ref_spec is not None:
        ref_clip = ref if ref is not None and not isinstance(ref, str) else _load(ref_spec, clip, trust_pickle)
    state_dir = Path(out) / ".geometry-state" / f"{kind}-{clip.fingerprint()[:12]}-{h}"
    result = run(kind, clip, data, config, ref=ref_clip, ref_spec=ref_spec if ref_clip is not None else None,
                 label=label, progress=progress, state_dir=state_dir)
    write_result(path, result)
    _clear_state(state_dir)
    return path, result


def _load(spec: str, clip, trust_pickle: bool):
    from grace_bench.models.checkpoints import load_checkpoint

    return load_checkpoint(spec, trust_pickle=trust_pickle, device=_model_device(clip))


def _clear_state(state_dir: Path) -> None:
    import shutil

    shutil.rmtree(state_dir, ignore_errors=True)
    parent = state_dir.parent
    if parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
