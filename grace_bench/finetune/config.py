"""The fine-tuning run configuration: a dataclass, YAML/JSON loading, per-method defaults and validation.

Resolution order (later wins): global defaults < the method's ``trainer_defaults`` (its paper's settings)
< the suite's training defaults (``Suite.training_defaults()``; micro: the study budget and val-tuned
learning rates) < ``--config FILE`` < explicit CLI flags. Every run writes the fully resolved result to
``config.json``, with ``sources`` saying where each value came from. Any bad value raises ``UserError``
naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grace_bench.errors import UserError
from grace_bench.models.lora import DEFAULT_TARGETS, SCALINGS, TARGET_SUFFIXES, TOWER_PREFIXES
from grace_bench.utils.parsing import parse_bool, parse_number

PRECISIONS = ("fp32", "bf16")
# Keys that may differ between a run and its resume without changing the trajectory.
RUNTIME_KEYS = frozenset({"resume", "device", "num_workers", "log_every", "progress", "out", "data_root",
                          "trust_pickle", "keep_last", "eval_every", "save_every", "val_split", "val_max_samples",
                          "sources"})
# Keys of config.json written by us; ignored when such a file is read back as a config.
WRITTEN_KEYS = frozenset({"arch", "method_config", "resolved", "versions", "created", "sources", "head_transform"})
# Trainer settings a method may give paper defaults for (None in the dataclass means "method decides").
METHOD_TUNABLE = ("lr", "weight_decay", "batch_size", "epochs", "max_steps", "warmup_steps", "lora_rank")
# LoRA shape settings a method may give paper defaults for (applied only to LoRA runs, when left unset).
LORA_SHAPE_KEYS = ("lora_alpha", "lora_dropout", "lora_targets", "lora_towers", "lora_split_qkv", "lora_scaling")
FALLBACK = {"lr": 1e-5, "weight_decay": 0.1, "batch_size": 128, "epochs": 10.0, "warmup_steps": 500, "lora_rank": 0}
# Where a value came from (config.json "sources"); suite and method sources are built from their data.
FROM_CLI = "command line"
FROM_CALLER = "set by the caller (FinetuneConfig)"
FROM_BUILTIN = "built-in default"
FROM_FALLBACK = "global fallback (neither the suite nor the method sets it)"


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (the resolved form is written to ``runs/NAME/config.json``)."""

    method: str = "ft"
    base: str = "micro"
    suite: str = "micro"
    out: str = "runs/ft"
    data_root: str | None = None
    # schedule and optimiser (None: the method's paper default, see Method.trainer_defaults)
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    grad_clip: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    seed: int = 0
    precision: str = "fp32"
    grad_checkpointing: bool = False
    max_train_samples: int | None = None
    # LoRA (rank 0 = full fine-tuning)
    lora_rank: int | None = None  # None: the method's default (GRACE: 64), else 0 = full fine-tuning
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    lora_towers: list[str] | None = None
    lora_split_qkv: bool | None = None  # None: the method's default, else False (one adapter on packed q/k/v)
    lora_scaling: str | None = None  # None: the method's default, else "standard" (alpha/r); "sqrt": alpha/sqrt(r)
    # bookkeeping
    log_every: int = 10
    eval_every: int = 0
    val_split: str = "val"
    val_max_samples: int | None = 2000
    save_every: int = 0
    keep_last: int = 2
    num_workers: int = 4
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    trust_pickle: bool = False
    method_args: dict[str, Any] = field(default_factory=dict)
    # where each value came from ({key or "method_args.KEY": source}); filled by config_from_dict/resolve_config
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


FIELD_NAMES = [f.name for f in dataclasses.fields(FinetuneConfig)]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} not found; pass an existing YAML or JSON file to --config")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {p} as text ({_first_line(exc)}); pass a YAML or JSON file") \
            from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's to fix
        raise UserError(f"cannot parse config file {p}: {_first_line(exc)}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of keys to values, not a {type(data).__name__}")
    return data


def config_from_dict(data: dict[str, Any], base: FinetuneConfig | None = None, *,
                     source: str | None = None) -> FinetuneConfig:
    """Overlay ``data`` on ``base`` (default: a fresh config); unknown keys are a UserError naming the key.

    ``source`` (e.g. ``"command line"``) is recorded in ``sources`` for every key set here.
    """
    cfg = dataclasses.replace(base) if base is not None else FinetuneConfig()
    cfg.sources = dict(cfg.sources)
    for key, value in data.items():
        if not isinstance(key, str):
            raise UserError(f"config key {key!r} is not a name; use the keys of `grace-bench finetune --help`")
        key_n = key.replace("-", "_")
        if key_n in WRITTEN_KEYS:  # written by us; ignored on read
            continue
        if key_n not in FIELD_NAMES:
            raise UserError(f"unknown config key '{key}'{did_you_mean(key_n, FIELD_NAMES)}")
        if key_n == "method_args":
            if not isinstance(value, dict):
                raise UserError("config key 'method_args' must be a mapping of method settings")
            merged = dict(cfg.method_args)
            merged.update(value)
            if source is not None:
                cfg.sources.update({f"method_args.{k}": source for k in value})
            value = merged
        elif source is not None:
            cfg.sources[key_n] = source
        setattr(cfg, key_n, value)
    return cfg


def did_you_mean(key: str, known: list[str] | tuple[str, ...]) -> str:
    """``"; did you mean 'X'?"`` for the closest known key, or ``""``."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _number(key: str, value: Any, *, integer: bool = False, minimum: float | None = None,
            exclusive: bool = False, allow_none: bool = False) -> Any:
    if value is None:
        if allow_none:
            return None
        raise UserError(f"config key '{key}' needs a value")
    try:
        if isinstance(value, bool):
            raise ValueError
        num = parse_number(value)
        if integer:
            if not float(num).is_integer():
                raise ValueError
            num = int(num)
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise UserError(f"config key '{key}' must be {kind}, got {value!r}") from None
    if not math.isfinite(num):
        raise UserError(f"config key '{key}' must be a finite number, got {value!r}")
    if minimum is not None and (num <= minimum if exclusive else num < minimum):
        op = ">" if exclusive else ">="
        raise UserError(f"config key '{key}' must be {op} {minimum:g}, got {value!r}")
    return num


def _bool(key: str, value: Any) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise UserError(f"config key '{key}' must be true or false, got {value!r}") from None


def _str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UserError(f"config key '{key}' must be a list of strings, got {value!r}")
    return list(value)


def validate_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """Check and normalise every field in place (numbers parsed, lists split); UserError names the bad key."""
    for key in ("method", "base", "suite", "out", "val_split", "device"):
        if not isinstance(getattr(cfg, key), str) or not getattr(cfg, key):
            raise UserError(f"config key '{key}' must be a non-empty string, got {getattr(cfg, key)!r}")
    if cfg.data_root is not None and not isinstance(cfg.data_root, (str, Path)):
        raise UserError(f"config key 'data_root' must be a path, got {cfg.data_root!r}")
    cfg.epochs = _number("epochs", cfg.epochs, minimum=0, exclusive=True, allow_none=True)
    cfg.max_steps = _number("max_steps", cfg.max_steps, integer=True, minimum=1, allow_none=True)
    cfg.batch_size = _number("batch_size", cfg.batch_size, integer=True, minimum=1, allow_none=True)
    cfg.lr = _number("lr", cfg.lr, minimum=0, exclusive=True, allow_none=True)
    cfg.weight_decay = _number("weight_decay", cfg.weight_decay, minimum=0, allow_none=True)
    cfg.warmup_steps = _number("warmup_steps", cfg.warmup_steps, integer=True, minimum=0, allow_none=True)
    cfg.grad_clip = _number("grad_clip", cfg.grad_clip, minimum=0)
    cfg.adam_eps = _number("adam_eps", cfg.adam_eps, minimum=0, exclusive=True)
    betas = cfg.adam_betas
    if isinstance(betas, str):
        betas = [b for b in betas.split(",") if b.strip()]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise UserError(f"config key 'adam_betas' must be two numbers like [0.9, 0.999], got {cfg.adam_betas!r}")
    b = tuple(_number("adam_betas", v, minimum=0) for v in betas)
    if not all(v < 1 for v in b):
        raise UserError(f"config key 'adam_betas' must be in [0, 1), got {cfg.adam_betas!r}")
    cfg.adam_betas = b  # type: ignore[assignment]
    cfg.seed = _number("seed", cfg.seed, integer=True, minimum=0)
    if cfg.precision not in PRECISIONS:
        raise UserError(f"config key 'precision' must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    for key in ("grad_checkpointing", "resume", "progress", "trust_pickle"):
        setattr(cfg, key, _bool(key, getattr(cfg, key)))
    cfg.max_train_samples = _number("max_train_samples", cfg.max_train_samples, integer=True, minimum=1,
                                    allow_none=True)
    cfg.lora_rank = _number("lora_rank", cfg.lora_rank, integer=True, minimum=0, allow_none=True)
    cfg.lora_alpha = _number("lora_alpha", cfg.lora_alpha, minimum=0, exclusive=True, allow_none=True)
    cfg.lora_dropout = _number("lora_dropout", cfg.lora_dropout, minimum=0)
    if cfg.lora_dropout >= 1:
        raise UserError(f"config key 'lora_dropout' must be < 1, got {cfg.lora_dropout!r}")
    cfg.lora_targets = _str_list("lora_targets", cfg.lora_targets)
    for t in cfg.lora_targets:
        if t not in TARGET_SUFFIXES and "." not in t and "*" not in t:
            raise UserError(f"config key 'lora_targets': unknown target {t!r}; use "
                            f"{', '.join(TARGET_SUFFIXES)} or a parameter-name pattern")
    if cfg.lora_towers is not None:
        cfg.lora_towers = _str_list("lora_towers", cfg.lora_towers)
        for t in cfg.lora_towers:
            if t not in TOWER_PREFIXES:
                raise UserError(f"config key 'lora_towers': unknown tower {t!r}; use 'vision' and/or 'text'")
    if cfg.lora_split_qkv is not None:
        cfg.lora_split_qkv = _bool("lora_split_qkv", cfg.lora_split_qkv)
    if cfg.lora_scaling is not None and cfg.lora_scaling not in SCALINGS:
        raise UserError(f"config key 'lora_scaling' must be one of {', '.join(SCALINGS)}, got {cfg.lora_scaling!r}")
    for key in ("log_every", "keep_last"):
        setattr(cfg, key, _number(key, getattr(cfg, key), integer=True, minimum=1))
    for key in ("eval_every", "save_every", "num_workers"):
        setattr(cfg, key, _number(key, getattr(cfg, key), integer=True, minimum=0))
    cfg.val_max_samples = _number("val_max_samples", cfg.val_max_samples, integer=True, minimum=1, allow_none=True)
    if not isinstance(cfg.method_args, dict):
        raise UserError("config key 'method_args' must be a mapping of method settings")
    if not isinstance(cfg.sources, dict):
        cfg.sources = {}
    return cfg


def _jsonish(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def identity_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (outside RUNTIME_KEYS) whose values differ between a saved resolved config and the current one."""
    diffs = []
    for key in FIELD_NAMES:
        if key in RUNTIME_KEYS:
            continue
        a, b = saved.get(key), current.get(key)
        if _jsonish(a) != _jsonish(b):
            diffs.append(key)
    return diffs
