"""Which name a checkpoint gets in summaries, leaderboards and figures.

A label comes from the model's own provenance, never from whichever command evaluated it last:

* an explicit ``--label`` (``EvalConfig.label``) wins for that model (source ``explicit``);
* the built-in micro-CLIP is ``zero-shot micro-CLIP``; a grace-bench run is its ``method`` (``config.json``);
  a WiSE-FT interpolation is ``wise-ft alpha=A``; any other model is its spec (source ``own``);
* a WiSE-FT endpoint (alpha 0 or 1) is a bit-exact copy of the zero-shot or fine-tuned model, so it gets
  that model's label (source ``endpoint``) and never overrides the label the model got from its own run.

One summary per fingerprint merges these: a source of higher rank (explicit > own > endpoint > a summary
from before labels had a source) replaces the stored label; a lower one keeps it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grace_bench.finetune.wise import endpoint_of, wise_label
from grace_bench.models.clip_model import ClipModel

MICRO_LABEL = "zero-shot micro-CLIP"
SOURCE_RANK = {"explicit": 3, "own": 2, "endpoint": 1}


@dataclass
class Identity:
    """The label of a checkpoint, where it came from, and the checkpoint fields that name it."""

    label: str
    source: str
    checkpoint: dict[str, Any] = field(default_factory=dict)
    wise_alpha: float | None = None


def spec_label(spec: str, method: str | None = None) -> str:
    """The label of a model known by ``spec`` (and the ``method`` of its run, if any)."""
    if str(spec).strip() == "micro":
        return MICRO_LABEL
    return str(method) if method else str(spec)


def identity_of(clip: ClipModel, explicit: str | None = None) -> Identity:
    """The identity ``clip`` gets from its own provenance (``clip.spec``, ``clip.info``), or ``explicit``."""
    method, alpha = clip.info.get("method"), clip.info.get("alpha")
    common = {"arch": clip.arch, "base": clip.base_spec}
    checkpoint = {"spec": clip.spec, **common, **{k: v for k, v in (("method", method), ("alpha", alpha))
                                                   if v is not None}}
    wise_alpha = float(alpha) if method == "wise-ft" and alpha is not None else None
    endpoint = endpoint_of(_run_config(clip)) if wise_alpha is not None else None
    if endpoint is not None:
        identity = Identity(spec_label(endpoint["spec"], endpoint["method"]), "endpoint",
                            {"spec": endpoint["spec"], **common,
                             **({"method": endpoint["method"]} if endpoint["method"] else {})}, wise_alpha)
    elif wise_alpha is not None:
        identity = Identity(wise_label(wise_alpha), "own", checkpoint, wise_alpha)
    else:
        identity = Identity(spec_label(clip.spec, method), "own", checkpoint)
    if explicit:
        identity.label, identity.source = explicit, "explicit"
    return identity


def merged_identity(new: Identity, existing: dict[str, Any] | None) -> Identity:
    """``new`` unless the summary ``existing`` holds a label of higher rank; the WiSE-FT alpha is kept."""
    if not existing:
        return new
    old_ckpt = dict(existing.get("checkpoint") or {})
    old_rank = SOURCE_RANK.get(str(existing.get("label_source")), 0)
    if SOURCE_RANK[new.source] >= old_rank or not existing.get("label"):
        winner = Identity(new.label, new.source, dict(new.checkpoint), new.wise_alpha)
    else:
        kept = {k: old_ckpt[k] for k in ("spec", "arch", "base", "method", "alpha") if k in old_ckpt}
        winner = Identity(str(existing["label"]), str(existing["label_source"]), kept, new.wise_alpha)
    if winner.wise_alpha is None and old_ckpt.get("wise_alpha") is not None:
        winner.wise_alpha = float(old_ckpt["wise_alpha"])
    return winner


def evaluated_as(spec: str, existing: dict[str, Any] | None) -> list[str]:
    """Every spec this fingerprint was evaluated as (same weights can have several names)."""
    before = list(((existing or {}).get("checkpoint") or {}).get("evaluated_as") or [])
    return sorted({*map(str, before), str(spec)})


def _run_config(clip: ClipModel) -> dict[str, Any]:
    run_dir = clip.info.get("run_dir")
    if not run_dir:
        return {}
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}
