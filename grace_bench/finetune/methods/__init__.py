"""Registry of fine-tuning methods by name (``ft``, ``flyp``, ``tecoa``, ``fare``, ``pmg-aft``, ``grace``, ...)."""

from __future__ import annotations

from grace_bench.errors import UserError
from grace_bench.finetune.methods.base import Hyper, Method, TrainContext
from grace_bench.registry import Registry

__all__ = ["METHODS", "Hyper", "Method", "TrainContext", "register_method", "get_method", "list_methods"]

# Built-in methods, imported on first use. A new method is one line here (or ``register_method`` elsewhere).
METHODS: Registry[type[Method]] = Registry("method", {
    "ft": "grace_bench.finetune.methods.ft:FT",
    "flyp": "grace_bench.finetune.methods.flyp:FLYP",
    "tecoa": "grace_bench.finetune.methods.tecoa:TeCoA",
    "fare": "grace_bench.finetune.methods.fare:FARE",
    "pmg-aft": "grace_bench.finetune.methods.pmg_aft:PMGAFT",
    "grace": "grace_bench.finetune.grace.method:GraceMethod",
    "sim-clip": "grace_bench.finetune.methods.simclip:SimCLIP",
    "advclip-lora": "grace_bench.finetune.methods.advclip_lora:AdvCLIPLoRA",
    "laat": "grace_bench.finetune.methods.laat:LAAT",
    "tga-zsr": "grace_bench.finetune.methods.tga_zsr:TGAZSR",
    "comp-tga": "grace_bench.finetune.methods.tga_zsr:CompTGA",
    "agft": "grace_bench.finetune.methods.agft:AGFT",
})


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return METHODS.register(cls.name, cls)


def get_method(name: str) -> type[Method]:
    """The method class called ``name``, or a one-line UserError listing the known ones."""
    if name == "wise-ft":
        raise UserError("wise-ft is post-hoc: train with --method ft, then run `grace-bench wise ZS_SPEC runs/FT`")
    cls = METHODS.get(name)
    if cls.name != name:
        raise ValueError(f"method registered as {name!r} calls itself {cls.name!r}; make the two agree")
    return cls


def list_methods() -> list[str]:
    """Names of all registered methods."""
    return METHODS.names()


def defaults_markdown() -> str:
    """A Markdown table of every method's defaults and the paper each comes from (for the README)."""
    rows = ["| method | setting | default | source |", "|---|---|---|---|"]
    for name in list_methods():
        if name.startswith("_"):
            continue
        cls = get_method(name)
        for key, hyper in {**cls.trainer_defaults, **cls.defaults}.items():
            rows.append(f"| {name} | {key} | {_show(key, hyper.value)} | {hyper.source} |")
    return "\n".join(rows)


PIXEL_KEYS = ("eps", "step_size")  # settings in pixel units, shown as k/255


def _show(key: str, value: object) -> str:
    from grace_bench.attacks.threat import format_eps

    if isinstance(value, float) and 0 < value < 1 and key.endswith(PIXEL_KEYS):
        return format_eps(value)  # 4/255 for a multiple of 1/255, else repr
    return repr(value)
