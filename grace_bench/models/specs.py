"""Checkpoint spec strings: one string names a model everywhere; ``parse_spec`` turns it into a typed spec.

Forms: ``micro``; ``ARCH:TAG``; ``ARCH:/path/file``; a bare weights file written by ``grace-bench convert``
(its safetensors metadata names the arch); ``local-dir:/path``; ``hf-hub:org/name``; a run directory
(``runs/NAME``, or any folder holding ``model.safetensors`` with a ``config.json`` beside it or up to two
levels above, e.g. ``runs/NAME/checkpoints/step_000100``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from grace_bench.errors import UserError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
RUN_WEIGHTS = "model.safetensors"
RUN_CONFIG = "config.json"
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
SPEC_FORMS = "micro, ARCH:TAG, ARCH:/path/weights.safetensors, local-dir:/path, hf-hub:org/name or runs/NAME"


@dataclass(frozen=True)
class MicroSpec:
    """The built-in micro-CLIP."""

    text: str = "micro"


@dataclass(frozen=True)
class PretrainedSpec:
    """An OpenCLIP architecture with a pretrained tag (``ViT-B-32:openai``)."""

    text: str
    arch: str
    tag: str


@dataclass(frozen=True)
class FileSpec:
    """A weights file, with its architecture (``ARCH:/path``) or without it (arch read from file metadata)."""

    text: str
    arch: str | None
    path: Path


@dataclass(frozen=True)
class LocalDirSpec:
    """OpenCLIP's ``local-dir:`` scheme: a folder with ``open_clip_config.json`` and a weights file."""

    text: str
    path: Path


@dataclass(frozen=True)
class HfHubSpec:
    """OpenCLIP's ``hf-hub:`` scheme (``hf-hub:org/name``), resolved from the local Hugging Face cache."""

    text: str
    repo_id: str


@dataclass(frozen=True)
class RunDirSpec:
    """A grace-bench run directory: ``model.safetensors`` plus the run's ``config.json``."""

    text: str
    path: Path
    weights: Path
    config: Path


CheckpointSpec = MicroSpec | PretrainedSpec | FileSpec | LocalDirSpec | HfHubSpec | RunDirSpec


def parse_spec(spec: str) -> CheckpointSpec:
    """Parse one checkpoint spec string; raise ``UserError`` naming the fix when it is not valid."""
    text = str(spec).strip()
    if not text:
        raise UserError(f"empty checkpoint spec; give one of: {SPEC_FORMS}")
    if text == "micro":
        return MicroSpec()
    if text.startswith(LOCAL_DIR_PREFIX):
        return _parse_local_dir(text)
    if text.startswith(HF_HUB_PREFIX):
        return _parse_hf_hub(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _parse_directory(text, path)
    if _is_run_name(text):
        raise UserError(f"run directory not found: {text}; check the run name (the folder holds {RUN_CONFIG} "
                        f"and {RUN_WEIGHTS})")
    arch, sep, rest = text.partition(":")
    if sep and arch and rest and (_known_arch(arch) or not _looks_like_path(arch, must_exist=False)):
        arch = check_arch(arch)
        if _looks_like_path(rest):
            return FileSpec(text=text, arch=arch, path=_existing_file(rest))
        return PretrainedSpec(text=text, arch=arch, tag=rest)
    if _looks_like_path(text):
        return FileSpec(text=text, arch=None, path=_existing_file(text))
    if _known_arch(text) is not None:
        raise UserError(f"'{text}' names an architecture but no weights; use {text}:TAG (see "
                        f"`open_clip.list_pretrained_tags_by_model('{text}')`) or {text}:/path/to/weights.safetensors")
    raise UserError(f"unrecognised checkpoint spec '{text}'; expected one of: {SPEC_FORMS}")


def check_arch(arch: str) -> str:
    """Return ``arch`` as OpenCLIP names it (``ViT-B/32`` -> ``ViT-B-32``), or raise ``UserError`` if unknown."""
    name = _known_arch(arch)
    if name is None:
        import open_clip

        close = difflib.get_close_matches(arch.replace("/", "-"), open_clip.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown OpenCLIP architecture '{arch}'{hint}; list the valid names with "
                        "`python -c \"import open_clip; print(open_clip.list_models())\"`")
    return name


def find_run_config(weights_dir: Path) -> Path | None:
    """The run ``config.json`` for a folder holding ``model.safetensors``: in it or up to two levels above."""
    for folder in (weights_dir, *list(weights_dir.resolve().parents)[:2]):
        if (folder / RUN_CONFIG).is_file():
            return folder / RUN_CONFIG
    return None


def _known_arch(arch: str) -> str | None:
    import open_clip

    from grace_bench.models.clip_model import register_model_configs

    register_model_configs()
    name = arch.replace("/", "-")
    return name if name in open_clip.list_models() else None


def _looks_like_path(text: str, *, must_exist: bool = True) -> bool:
    if "/" in text or "\\" in text or text.startswith(("~", ".")) or text.lower().endswith(WEIGHT_SUFFIXES):
        return True
    return must_exist and Path(text).exists()


def _is_run_name(text: str) -> bool:
    return text.replace("\\", "/").startswith(("runs/", "./runs/"))


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if path.is_dir():
        raise UserError(f"{text} is a folder, not a weights file; point at the .pt/.pth/.bin/.safetensors file "
                        f"inside it, or use local-dir:{text} for an OpenCLIP model folder")
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {text}; check the path")
    return path


def _parse_local_dir(text: str) -> LocalDirSpec:
    raw = text[len(LOCAL_DIR_PREFIX):]
    path = Path(raw).expanduser()
    if not raw or not path.is_dir():
        raise UserError(f"local-dir folder not found: '{raw}'; check the path after 'local-dir:'")
    if not (path / "open_clip_config.json").is_file():
        raise UserError(f"{path} has no open_clip_config.json; local-dir: needs an OpenCLIP model folder "
                        "(open_clip_config.json + weights), or use ARCH:/path/to/weights for a bare weights file")
    return LocalDirSpec(text=text, path=path)


def _parse_hf_hub(text: str) -> HfHubSpec:
    repo_id = text[len(HF_HUB_PREFIX):].strip("/")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"bad hf-hub spec '{text}'; write it as hf-hub:org/name")
    return HfHubSpec(text=text, repo_id=repo_id)


def _parse_directory(text: str, path: Path) -> CheckpointSpec:
    weights = path / RUN_WEIGHTS
    config = find_run_config(path) if weights.is_file() else None
    if weights.is_file() and config is not None:
        return RunDirSpec(text=text, path=path, weights=weights, config=config)
    if weights.is_file():
        raise UserError(f"{path} has {RUN_WEIGHTS} but no {RUN_CONFIG} naming its arch; use ARCH:{weights}")
    if (path / "open_clip_config.json").is_file():
        raise UserError(f"{path} is an OpenCLIP model folder; load it as local-dir:{text}")
    if (path / RUN_CONFIG).is_file() and any(path.glob("checkpoints/step_*")):
        raise UserError(f"run {path} has no {RUN_WEIGHTS} yet (not finished); point at one of its "
                        f"checkpoints/step_* folders or resume the run")
    raise UserError(f"{path} is a folder but not a grace-bench run ({RUN_CONFIG} + {RUN_WEIGHTS}); "
                    f"give a weights file as ARCH:/path/to/weights.safetensors")

