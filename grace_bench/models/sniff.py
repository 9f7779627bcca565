"""Recognise the checkpoint formats found in the wild and normalise them to a full OpenCLIP state dict.

Formats: an OpenCLIP state dict; an OpenCLIP training dict (``{"state_dict": ..., "epoch": ...}``, often with a
``module.`` prefix); a TeCoA dict (``vision_encoder_state_dict``: vision tower only; also written by PMG-AFT and
TGA-ZSR, which fork TeCoA's training script); an AGFT dict (``{"modules": {"clip.visual": ...}, "params": {}}``);
a visual-only state dict (FARE, TeCoA and Sim-CLIP ``.pt`` files of RobustVLM: keys of ``model.visual``, with or
without ``visual.``); a pickled whole module (wise-ft, FLYP), which only reaches here once the caller has chosen
to trust the pickle. docs/checkpoints.md maps each public checkpoint to its format. Key prefixes (``module.``,
``model.``, ``image_encoder.model.`` ...) are found by matching keys and shapes against the target model's own
state dict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from grace_bench.errors import UserError

SUPPORTED_FORMATS = (
    "openclip-state-dict",
    "openclip-training-dict",
    "tecoa",
    "agft",
    "visual-only",
    "pickled-module",
)
VISUAL = "visual."
# Wrapper keys of training dicts that hold the model weights, in the order they are tried.
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_TECOA_KEY = "vision_encoder_state_dict"
# AGFT's ``MyCLIP.state_dict_train()``: trained modules by name, and trained loose parameters (VPT prompts).
_AGFT_KEYS = {"modules", "params"}
_AGFT_VISUAL = "clip.visual"
# Scalars that OpenAI's TorchScript CLIP keeps beside its weights.
_JIT_ATTRIBUTES = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Sniffed:
    """A normalised checkpoint: ``state_dict`` has exactly the target model's keys and shapes."""

    state_dict: dict[str, torch.Tensor]
    format: str
    notes: list[str] = field(default_factory=list)
    visual_only: bool = False


def sniff_checkpoint(
    obj: Any,
    reference: Mapping[str, torch.Tensor],
    *,
    source: str,
    base_state_dict: Callable[[str], Mapping[str, torch.Tensor] | None] | None = None,
) -> Sniffed:
    """Detect the format of a loaded checkpoint ``obj`` and map it onto ``reference`` (the target model's state dict).

    Visual-only formats borrow every non-visual tensor (text tower, ``logit_scale``) from
    ``base_state_dict(format)``; without it, or when it returns None (no base known for that format), they raise
    ``UserError``. Missing, unexpected or mis-shaped keys raise ``UserError``.
    """
    flat, fmt, notes, visual_only = _unwrap(obj, source)
    mapped, more_notes = _map_keys(flat, reference, source=source, visual_only=visual_only)
    notes += more_notes
    check_state_dict(mapped, {k: reference[k] for k in mapped if k in reference}, source=source)  # before any base
    has_text = any(not k.startswith(VISUAL) for k in mapped)
    needs_text = not has_text and any(not k.startswith(VISUAL) for k in reference)
    if needs_text:
        if fmt == "openclip-state-dict":
            fmt = "visual-only"
        base = base_state_dict(fmt) if base_state_dict is not None else None
        if base is None:
            raise UserError(f"{source} holds only vision-tower weights ({fmt}); name the model it was fine-tuned "
                            "from with --base ARCH:TAG (or ARCH:/path) so its text tower can be used (published "
                            "FARE, TeCoA, PMG-AFT, TGA-ZSR and AGFT files fine-tune OpenAI's CLIP: ARCH:openai)")
        borrowed = {k: base[k] for k in reference if not k.startswith(VISUAL) and k in base}
        notes.append(f"text tower and {len(borrowed)} non-visual tensors taken from the base model")
        mapped = {**borrowed, **mapped}
    check_state_dict(mapped, reference, source=source)
    return Sniffed(state_dict=mapped, format=fmt, notes=notes, visual_only=needs_text)


def check_state_dict(state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], *,
                     source: str) -> None:
    """Raise ``UserError`` listing the first few missing, unexpected or mis-shaped keys (strict loading)."""
    missing = [k for k in reference if k not in state_dict]
    unexpected = [k for k in state_dict if k not in reference]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(reference[k].shape)}"
              for k in reference if k in state_dict and state_dict[k].shape != reference[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({_first(shapes)})")
    if problems:
        raise UserError(f"{source} does not fit the architecture: {'; '.join(problems)}; "
                        "check that ARCH names the architecture these weights were trained with")


def _unwrap(obj: Any, source: str) -> tuple[dict[str, Any], str, list[str], bool]:
    """Peel containers off ``obj``: returns (flat mapping, format name, notes, vision-only flag)."""
    if isinstance(obj, nn.Module):
        flat = dict(obj.state_dict())
        note = f"pickled module {type(obj).__module__}.{type(obj).__qualname__}"
        return flat, "pickled-module", [note], False
    if not isinstance(obj, Mapping):
        raise _unknown(source, f"a {type(obj).__name__}")
    if _TECOA_KEY in obj:
        inner, fmt, notes, _ = _unwrap(obj[_TECOA_KEY], source)
        extra = sorted(str(k) for k in obj if k != _TECOA_KEY)
        notes.append(f"TeCoA-style dict (TeCoA, PMG-AFT, TGA-ZSR): vision weights from '{_TECOA_KEY}'"
                     + (f"; ignored {_first(extra)}" if extra else ""))
        return inner, "tecoa", notes, True
    if _AGFT_KEYS == set(obj) and isinstance(obj["modules"], Mapping):
        return _unwrap_agft(obj, source)
    if _tensor_share(obj) >= 0.5:
        return dict(obj), "openclip-state-dict", [], False
    for key in _STATE_KEYS:
        if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
            inner, fmt, notes, visual = _unwrap(obj[key], source)
            extra = sorted(str(k) for k in obj if k != key)
            notes.insert(0, f"weights under '{key}'" + (f"; ignored {_first(extra)}" if extra else ""))
            return inner, ("openclip-training-dict" if fmt == "openclip-state-dict" else fmt), notes, visual
    raise _unknown(source, f"a dict with keys {_first(sorted(map(str, obj)))}")


def _unwrap_agft(obj: Mapping, source: str) -> tuple[dict[str, Any], str, list[str], bool]:
    """AGFT's training dict: the vision tower under ``modules['clip.visual']``; prompt-only (VPT) files are refused."""
    modules, params = obj["modules"], obj["params"]
    if params:
        raise UserError(f"{source} is an AGFT checkpoint with learned prompts ({_first(sorted(map(str, params)))}), "
                        "which change CLIP's forward pass; grace-bench evaluates fine-tuned weights only: use a "
                        "checkpoint trained without VPT (its 'modules' holds 'clip.visual')")
    if _AGFT_VISUAL not in modules or not isinstance(modules[_AGFT_VISUAL], Mapping):
        raise _unknown(source, f"an AGFT-style dict whose 'modules' are {_first(sorted(map(str, modules))) or 'empty'}"
                               f" (expected '{_AGFT_VISUAL}')")
    inner, _, notes, _ = _unwrap(modules[_AGFT_VISUAL], source)
    extra = sorted(str(k) for k in modules if k != _AGFT_VISUAL)
    notes.insert(0, f"AGFT dict: vision weights from modules['{_AGFT_VISUAL}']"
                 + (f"; ignored {_first(extra)}" if extra else ""))
    return inner, "agft", notes, True


def _map_keys(flat: Mapping[str, Any], reference: Mapping[str, torch.Tensor], *, source: str,
              visual_only: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Find the (strip, add) prefix pair that lands most keys on ``reference`` with the right shape, and apply it."""
    notes = []
    dropped = [k for k, v in flat.items() if not isinstance(v, torch.Tensor)]
    tensors = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
    for name in _JIT_ATTRIBUTES:
        if name in tensors and name not in reference:
            dropped.append(name)
            del tensors[name]
    if dropped:
        notes.append(f"ignored {len(dropped)} non-weight entries ({_first(dropped)})")
    if not tensors:
        raise _unknown(source, "no tensors")
    adds = (VISUAL,) if visual_only else ("", VISUAL)
    # Shapes first; names alone only when no shape fits, so a wrong ARCH is reported as shape mismatches.
    votes = _vote(tensors, reference, adds, match_shapes=True) or _vote(tensors, reference, adds, match_shapes=False)
    if not votes:
        raise _unknown(source, f"tensors named {_first(sorted(tensors))}, none of which match the architecture")
    # Most matches wins; ties go to the full namespace, then to the shortest stripped prefix.
    (strip, add), _ = max(votes.items(), key=lambda kv: (kv[1], kv[0][1] == "", -len(kv[0][0])))
    mapped: dict[str, torch.Tensor] = {}
    outside = []
    for key, value in tensors.items():
        if not key.startswith(strip):
            outside.append(key)
            continue
        mapped[add + key[len(strip):]] = value
    if strip:
        notes.append(f"stripped prefix '{strip}'")
    if add:
        notes.append(f"added prefix '{add}'")
    if outside:
        notes.append(f"ignored {len(outside)} tensors outside '{strip}' ({_first(outside)})")
    _fix_logit_shapes(mapped, reference)
    return mapped, notes


def _vote(tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], adds: tuple[str, ...], *,
          match_shapes: bool) -> Counter[tuple[str, str]]:
    """Count, per (strip, add) prefix pair, the keys it lands on ``reference`` (optionally with the right shape)."""
    votes: Counter[tuple[str, str]] = Counter()
    for key, value in tensors.items():
        parts = key.split(".")
        for i in range(len(parts)):
            suffix = ".".join(parts[i:])
            strip = key[: len(key) - len(suffix)]
            for add in adds:
                ref = reference.get(add + suffix)
                if ref is not None and (not match_shapes or _same_shape(ref, value)):
                    votes[(strip, add)] += 1
    return votes


def _fix_logit_shapes(mapped: dict[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    """``logit_scale``/``logit_bias`` are scalars in some checkpoints and 1-element tensors in others."""
    for name in ("logit_scale", "logit_bias"):
        if name in mapped and name in reference and mapped[name].numel() == reference[name].numel() == 1:
            mapped[name] = mapped[name].reshape(reference[name].shape)


def _same_shape(ref: torch.Tensor, value: torch.Tensor) -> bool:
    return ref.shape == value.shape or ref.numel() == value.numel() == 1


def _tensor_share(obj: Mapping) -> float:
    return sum(isinstance(v, torch.Tensor) for v in obj.values()) / max(1, len(obj))


def _first(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n})" if len(items) > n else "")


def _unknown(source: str, seen: str) -> UserError:
    return UserError(f"{source} is not a checkpoint format grace-bench knows: it holds {seen}; supported: "
                     f"{', '.join(SUPPORTED_FORMATS)}; rewrite it as an OpenCLIP state dict (.safetensors)")
