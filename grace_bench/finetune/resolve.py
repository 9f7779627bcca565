"""``resolve_config``: fill every unset trainer setting from the suite, the method's paper, or the fallback.

Apart from ``config`` (which only parses and validates) so the config module needs neither the method
registry nor the suites: ``methods.base`` refers to ``FinetuneConfig`` and nothing imports back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from grace_bench.data.suites import get_suite
from grace_bench.finetune.config import (
    FALLBACK,
    FIELD_NAMES,
    FROM_BUILTIN,
    FROM_CALLER,
    FROM_FALLBACK,
    LORA_SHAPE_KEYS,
    METHOD_TUNABLE,
    FinetuneConfig,
    _jsonish,
    validate_config,
)
from grace_bench.finetune.methods import get_method


def resolve_config(cfg: FinetuneConfig, method_cls: type | None = None) -> FinetuneConfig:
    """Validate, then fill every unset trainer setting: the suite's training defaults, else the method's paper
    defaults, else FALLBACK. ``sources`` records where every value came from."""
    cfg = validate_config(dataclasses.replace(cfg))
    cfg.method_args, cfg.sources = dict(cfg.method_args), dict(cfg.sources)
    if method_cls is None:
        method_cls = get_method(cfg.method)
    _mark_given(cfg)
    suite = _suite_training_defaults(cfg.suite)
    paper = getattr(method_cls, "trainer_defaults", {})
    method_source = f"method '{method_cls.name}' default"

    def fill(key: str, value: Any, source: str) -> None:
        setattr(cfg, key, value)
        cfg.sources[key] = source

    if cfg.max_steps is None and cfg.epochs is None:  # the run length is one unit: steps or epochs, never mixed
        length = suite.trainer if suite is not None else {}
        if "max_steps" in length or "epochs" in length:
            key = "max_steps" if "max_steps" in length else "epochs"
            fill(key, length[key], suite.source)
        elif "max_steps" in paper:
            fill("max_steps", paper["max_steps"].value, f"{method_source} ({paper['max_steps'].source})")
        elif "epochs" in paper:
            fill("epochs", paper["epochs"].value, f"{method_source} ({paper['epochs'].source})")
        else:
            fill("epochs", FALLBACK["epochs"], FROM_FALLBACK)
    for key in ("lora_rank", "weight_decay", "batch_size", "warmup_steps", "lr"):  # lr last: it depends on LoRA
        if getattr(cfg, key) is not None:
            continue
        suite_value = _suite_value(suite, key, cfg, paper)
        if suite_value is not None:
            fill(key, suite_value, suite.lr_source if key == "lr" else suite.source)
        elif key in paper:
            fill(key, paper[key].value, f"{method_source} ({paper[key].source})")
        elif key in FALLBACK:
            fill(key, FALLBACK[key], FROM_FALLBACK)
    if int(cfg.lora_rank) > 0:  # the method's LoRA shape (AdvCLIP-LoRA: alpha, dropout, q/k/v slices), if unset
        for key in LORA_SHAPE_KEYS:
            if key in paper and cfg.sources.get(key) == FROM_BUILTIN:
                fill(key, paper[key].value, f"{method_source} ({paper[key].source})")
    method_defaults = getattr(method_cls, "defaults", {})
    if suite is not None:
        for key, value in suite.method_args.items():
            if key in method_defaults and key not in cfg.method_args:
                cfg.method_args[key] = value
                cfg.sources[f"method_args.{key}"] = suite.source
        default_rank = paper["lora_rank"].value if "lora_rank" in paper else FALLBACK["lora_rank"]
        tuned = suite.knobs_for(cfg.method, lora=int(cfg.lora_rank) > 0, lora_by_default=int(default_rank) > 0)
        for key, value in tuned.items():  # the method's own knobs, tuned on val together with its lr
            if key in method_defaults and key not in cfg.method_args:
                cfg.method_args[key] = value
                cfg.sources[f"method_args.{key}"] = suite.lr_source
    method_cls.resolve_hparams(cfg.method_args)  # raises UserError naming a bad method_args key
    for key, hyper in method_defaults.items():
        cfg.sources.setdefault(f"method_args.{key}", f"{method_source} ({hyper.source})")
    return validate_config(cfg)


def _mark_given(cfg: FinetuneConfig) -> None:
    """Record FROM_CALLER for values set on the config object without a recorded source; FROM_BUILTIN else."""
    defaults = FinetuneConfig()
    for key in FIELD_NAMES:
        if key in ("sources", "method_args") or key in cfg.sources:
            continue
        value = getattr(cfg, key)
        if key in METHOD_TUNABLE:
            if value is not None:
                cfg.sources[key] = FROM_CALLER
        elif _jsonish(value) != _jsonish(getattr(defaults, key)):
            cfg.sources[key] = FROM_CALLER
        else:
            cfg.sources[key] = FROM_BUILTIN
    for key in cfg.method_args:
        cfg.sources.setdefault(f"method_args.{key}", FROM_CALLER)


def _suite_training_defaults(name: str):
    return get_suite(name).training_defaults()


def _suite_value(suite, key: str, cfg: FinetuneConfig, paper: dict[str, Any]) -> Any:
    """The suite's default for trainer ``key`` (the lr per method and LoRA setting), or None."""
    if suite is None:
        return None
    if key != "lr":
        return suite.trainer.get(key)
    default_rank = paper["lora_rank"].value if "lora_rank" in paper else FALLBACK["lora_rank"]
    return suite.lr_for(cfg.method, lora=int(cfg.lora_rank) > 0, lora_by_default=int(default_rank) > 0)
