"""``load_checkpoint(spec)``: every checkpoint spec form to a ``ClipModel``, loaded safely and strictly.

Weights are read with safetensors or ``torch.load(weights_only=True)``; a pickled Python object is refused
unless ``trust_pickle=True``. Pretrained tags and ``hf-hub:`` models come from the local cache only when
``HF_HUB_OFFLINE`` is set, so an offline machine fails at once instead of retrying for ~47 s.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from grace_bench.errors import UserError
from grace_bench.models.clip_model import ClipModel, register_model_configs
from grace_bench.models.head_transform import validate_head_transform
from grace_bench.models.sniff import Sniffed, sniff_checkpoint
from grace_bench.models.specs import (
    FileSpec,
    HfHubSpec,
    LocalDirSpec,
    MicroSpec,
    PretrainedSpec,
    RunDirSpec,
    parse_spec,
)
from grace_bench.utils.parsing import TRUE_WORDS

# The base model whose text tower a visual-only checkpoint borrows, when --base is not given.
DEFAULT_BASES = {"micro-clip": "micro"}
# Formats written only by code that fine-tunes OpenAI's CLIP (``clip.load``): TeCoA, PMG-AFT, TGA-ZSR (tecoa) and
# AGFT; their base defaults to ARCH:openai when --base is not given.
OPENAI_FORMATS = ("tecoa", "agft")
# Weight file names in an OpenCLIP model folder, most preferred first (as OpenCLIP orders them).
_DIR_WEIGHTS = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def load_checkpoint(spec: str, *, base: str | None = None, trust_pickle: bool = False,
                    device: str | torch.device = "cpu") -> ClipModel:
    """Load any checkpoint spec (``micro``, ``ARCH:TAG``, ``ARCH:/path``, ``local-dir:``, ``hf-hub:``, run dir).

    ``base`` names the model a visual-only checkpoint was fine-tuned from (its text tower is used). ``trust_pickle``
    allows unpickling Python objects (wise-ft/FLYP whole modules); only for files from a trusted source.
    """
    parsed = parse_spec(spec)
    if isinstance(parsed, MicroSpec):
        clip = _load_micro()
    elif isinstance(parsed, PretrainedSpec):
        clip = _load_pretrained(parsed)
    elif isinstance(parsed, FileSpec):
        clip = _load_file(parsed, base=base, trust_pickle=trust_pickle)
    elif isinstance(parsed, LocalDirSpec):
        clip = _load_model_dir(parsed.path.resolve(), parsed.text, base=base, trust_pickle=trust_pickle)
    elif isinstance(parsed, HfHubSpec):
        clip = _load_hf_hub(parsed, base=base, trust_pickle=trust_pickle)
    else:
        clip = _load_run_dir(parsed, base=base, trust_pickle=trust_pickle)
    clip.spec = parsed.text
    clip.model.to(device).eval()
    clip.invalidate_fingerprint()
    return clip


def read_checkpoint_file(path: str | os.PathLike, *, trust_pickle: bool = False, arch: str | None = None) -> Any:
    """Read a weights file safely: safetensors (detected by content) or ``torch.load(weights_only=True)``.

    A file that holds pickled Python objects raises ``UserError`` unless ``trust_pickle``, in which case it is
    unpickled with ``weights_only=False``. ``arch`` only completes the ``grace-bench convert`` hint in that error.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}; check the path")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is an empty file, not a checkpoint; re-save or re-download it")
    if _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise _corrupt(path, f"a truncated or corrupt safetensors file: {_short(e)}") from e
    try:
        with _numpy_scalars_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _pickled_global(e)
        if found is None:  # the safe unpickler met garbage, not a Python class: the file is damaged
            raise _corrupt(path, f"not a valid pickle stream: {_short(_weights_only_reason(e))}") from e
        if not trust_pickle:
            what = f" ({found})" if found else ""
            raise UserError(
                f"{path} holds a pickled Python object{what}, which grace-bench will not unpickle by default; "
                f"rewrite it once with `grace-bench convert {path} OUT.safetensors --arch {arch or 'ARCH'} "
                "--trust-pickle` "
                "(only if you trust its source) or pass --trust-pickle") from e
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file
        first = str(e).split(". ")[0]
        raise _corrupt(path, f"{type(e).__name__}: {_short(first, 120)}" if first else f"{type(e).__name__}, truncated?"
                       ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as e:
        raise UserError(f"{path} pickles classes that cannot be imported here ({_short(e)}); run "
                        "`grace-bench convert ... --trust-pickle` with the code that saved it on PYTHONPATH") from e
    except Exception as e:  # noqa: BLE001
        raise _unreadable(path, e) from e


@contextmanager
def _numpy_scalars_allowed() -> Iterator[None]:
    """Let the weights-only unpickler rebuild numpy scalars (TeCoA and PMG-AFT save ``best_acc1`` as ``np.float64``).

    Only ``scalar`` and numeric ``dtype`` s are allowed (a number from a dtype and its bytes), under the module names
    of numpy 2 and numpy 1 (the checkpoints were written with numpy 1); arrays and every other object stay refused.
    """
    import numpy as np

    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: no allowlist context; such files are refused as pickles
        yield
        return
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar
    numeric_dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}  # numpy >= 1.25 builds these classes
    allowed: list[Any] = [scalar, np.dtype, *numeric_dtypes]
    if _torch_version() >= (2, 6):  # (object, "name") entries: a file pickled under the other numpy's module name
        allowed += [(scalar, f"{module}.multiarray.scalar") for module in ("numpy._core", "numpy.core")]
    with safe_globals(allowed):
        yield


def _torch_version() -> tuple[int, ...]:
    """(major, minor) of the installed torch, e.g. (2, 6) for ``2.6.0+cu124``."""
    return tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])


def instantiate_clip_model(model_name: str, *, spec: str, pretrained: str | None = None,
                           force_quick_gelu: bool = False, preprocess_cfg: Mapping[str, Any] | None = None,
                           tokenizer_name: str | None = None) -> ClipModel:
    """Create OpenCLIP ``model_name`` (a registry name or ``local-dir:`` folder) as a ``ClipModel`` in eval mode.

    ``pretrained`` may be a local weights file, loaded by OpenCLIP itself (weights only, strict).
    """
    from contextlib import nullcontext

    import open_clip

    from grace_bench.models.loading import clip_from_open_clip, no_random_init_warning

    register_model_configs()
    quiet = no_random_init_warning() if pretrained is None else nullcontext()  # the caller loads the weights
    try:
        with quiet:
            model = open_clip.create_model(model_name, pretrained=pretrained, load_weights=pretrained is not None,
                                           force_quick_gelu=force_quick_gelu,
                                           force_preprocess_cfg=dict(preprocess_cfg or {}))
    except Exception as e:  # noqa: BLE001 - OpenCLIP raises RuntimeError/ValueError/FileNotFoundError
        raise UserError(f"could not build OpenCLIP model '{model_name}' ({_short(e)}); check the spec") from e
    return clip_from_open_clip(model, arch=model_name, spec=spec, tokenizer_name=tokenizer_name)


def hub_offline() -> bool:
    """True when Hugging Face Hub access is off (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``), read at call time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if value.strip().lower() in TRUE_WORDS:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


# ---------------------------------------------------------------- one loader per spec form


def _load_micro() -> ClipModel:
    from grace_bench.models.micro import load_micro_clip

    clip = load_micro_clip()
    clip.info.setdefault("format", "micro")
    return clip


def _load_pretrained(spec: PretrainedSpec) -> ClipModel:
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        raise UserError(f"'{spec.tag}' is not a pretrained tag of {spec.arch}; known tags: "
                        f"{', '.join(tags) or 'none'}; or use {spec.arch}:/path/to/weights.safetensors")
    weights = _cached_pretrained_file(pcfg)
    if weights is None:
        if hub_offline():
            raise UserError(f"the weights of {spec.text} are not in the local cache and HF_HUB_OFFLINE is set; "
                            f"download them on a connected machine first, or use {spec.arch}:/path/to/weights.pt "
                            "(works offline)")
        try:
            weights = open_clip.download_pretrained(pcfg)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"could not download the weights of {spec.text} ({_short(e)}); they are not in the local "
                            f"cache; set HF_HUB_OFFLINE=1 to fail fast, or use {spec.arch}:/path/to/weights.pt") from e
    arch, quick_gelu, notes = _match_activation(spec.arch, pcfg)
    clip = instantiate_clip_model(arch, spec=spec.text, pretrained=str(weights), force_quick_gelu=quick_gelu,
                                  preprocess_cfg={k: pcfg[k] for k in _PREPROCESS_KEYS if k in pcfg})
    clip.info.update(format="openclip-pretrained", weights=str(weights), notes=notes)
    return clip


def _load_file(spec: FileSpec, *, base: str | None, trust_pickle: bool) -> ClipModel:
    arch = spec.arch or arch_from_metadata(spec.path)
    if arch is None:
        raise UserError(f"cannot tell the architecture of {spec.path}; write the spec as ARCH:{spec.text} "
                        "(see `open_clip.list_models()`)")
    obj = read_checkpoint_file(spec.path, trust_pickle=trust_pickle, arch=arch)  # a bad file fails before the build
    clip = instantiate_clip_model(arch, spec=spec.text)
    return _fill(clip, obj, source=str(spec.path), base=base, trust_pickle=trust_pickle)


def _load_model_dir(folder: Path, text: str, *, base: str | None, trust_pickle: bool, weights: Path | None = None,
                    tokenizer_name: str | None = None, arch: str | None = None) -> ClipModel:
    config = _read_json(folder / "open_clip_config.json")
    if "model_cfg" not in config:
        raise UserError(f"{folder / 'open_clip_config.json'} has no 'model_cfg'; it is not an OpenCLIP model config")
    weights = weights or next((folder / n for n in _DIR_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
        if len(found) != 1:
            raise UserError(f"{folder} holds {'no' if not found else 'several'} weight files {found or ''}; "
                            "put one open_clip_model.safetensors (or open_clip_pytorch_model.bin) beside "
                            "open_clip_config.json")
        weights = folder / found[0]
    obj = read_checkpoint_file(weights, trust_pickle=trust_pickle)
    clip = instantiate_clip_model(f"local-dir:{folder}", spec=text, tokenizer_name=tokenizer_name)
    clip.arch = arch or clip.arch
    clip = _fill(clip, obj, source=str(weights), base=base, trust_pickle=trust_pickle)
    clip.info["weights"] = str(weights)
    return clip


def _load_hf_hub(spec: HfHubSpec, *, base: str | None, trust_pickle: bool) -> ClipModel:
    config = Path(_hub_file(spec.repo_id, "open_clip_config.json", spec.text))
    weights = next((w for name in _DIR_WEIGHTS[:3] if (w := _hub_file(spec.repo_id, name, spec.text, required=False))),
                   None)
    if weights is None:
        raise UserError(f"{spec.text} has no OpenCLIP weights in the local cache ({', '.join(_DIR_WEIGHTS[:3])}); "
                        "download them on a connected machine, or use local-dir:/path/to/folder")
    text_cfg = _read_json(config).get("model_cfg", {}).get("text_cfg", {})
    local_tokenizer = not text_cfg.get("hf_tokenizer_name") or (config.parent / "tokenizer.json").is_file()
    return _load_model_dir(config.parent, spec.text, base=base, trust_pickle=trust_pickle, arch=spec.text,
                           weights=Path(weights), tokenizer_name=None if local_tokenizer else spec.text)


def _load_run_dir(spec: RunDirSpec, *, base: str | None, trust_pickle: bool) -> ClipModel:
    config = _read_json(spec.config)
    if not config.get("arch"):
        raise UserError(f"{spec.config} has no 'arch'; it is not a grace-bench run config (rerun the fine-tuning)")
    obj = read_checkpoint_file(spec.weights, trust_pickle=False)
    clip = instantiate_clip_model(config["arch"], spec=spec.text)
    clip = _fill(clip, obj, source=str(spec.weights), base=base or config.get("base"), trust_pickle=trust_pickle)
    clip.base_spec = base or config.get("base")
    clip.info.update(run_dir=str(spec.config.parent), method=config.get("method"))
    transform = validate_head_transform(config.get("head_transform"), str(spec.config))
    if transform is not None:  # e.g. LAAT: every head of this checkpoint gets the anchor expansion
        clip.info["head_transform"] = transform
        clip.invalidate_fingerprint()
    if config.get("alpha") is not None:  # a WiSE-FT interpolation
        clip.info["alpha"] = float(config["alpha"])
    clip.info["format"] = "grace-bench-run"
    return clip


# ---------------------------------------------------------------- helpers


def _fill(clip: ClipModel, obj: Any, *, source: str, base: str | None, trust_pickle: bool) -> ClipModel:
    """Sniff ``obj``, normalise it onto ``clip.model`` and load it strictly.

    A visual-only checkpoint is loaded into the base model itself, so the result has the base's text tower and also
    its activation (QuickGELU for OpenAI weights) and preprocessing, which no state dict records.
    """
    reference = clip.model.state_dict()
    base_spec = base or DEFAULT_BASES.get(clip.arch)
    bases: list[ClipModel] = []
    defaulted: list[str] = []

    def base_state_dict(fmt: str) -> Mapping[str, torch.Tensor] | None:
        nonlocal base_spec
        if base_spec is None and (base_spec := _openai_base(fmt, clip.arch)):
            defaulted.append(f"no --base given: base {base_spec}, as {fmt} files are fine-tuned from OpenAI's CLIP")
        if base_spec is None:
            return None
        bases.append(load_checkpoint(base_spec, trust_pickle=trust_pickle))
        return bases[-1].model.state_dict()

    sniffed: Sniffed = sniff_checkpoint(obj, reference, source=source, base_state_dict=base_state_dict)
    notes = defaulted + sniffed.notes
    if sniffed.visual_only and bases:
        clip = _on_base(bases[-1], like=clip, state_dict=sniffed.state_dict, source=source, notes=notes)
    clip.model.load_state_dict(sniffed.state_dict, strict=True)
    clip.base_spec = base_spec if (sniffed.visual_only or base) else None
    clip.info.update(format=sniffed.format, notes=notes, source=source)
    return clip


def _openai_base(fmt: str, arch: str) -> str | None:
    """``ARCH:openai`` for the formats whose training code always starts from OpenAI's CLIP (docs/checkpoints.md)."""
    import open_clip

    if fmt in OPENAI_FORMATS and open_clip.get_pretrained_cfg(arch, "openai"):
        return f"{arch}:openai"
    return None


def _on_base(base: ClipModel, *, like: ClipModel, state_dict: Mapping[str, torch.Tensor], source: str,
             notes: list[str]) -> ClipModel:
    """The base model, ready to take ``state_dict`` (checked to fit), in place of the model built from ARCH."""
    from grace_bench.models.sniff import check_state_dict

    check_state_dict(state_dict, base.model.state_dict(), source=source)
    if base.arch != like.arch:
        notes.append(f"built as the base's architecture {base.arch} (its activation and preprocessing)")
    base.info = {}
    return base


def _match_activation(arch: str, pcfg: Mapping[str, Any]) -> tuple[str, bool, list[str]]:
    """Use QuickGELU when the tag was trained with it (OpenAI weights), preferring the ``-quickgelu`` arch name."""
    import open_clip

    model_cfg = open_clip.get_model_config(arch) or {}
    if not pcfg.get("quick_gelu") or model_cfg.get("quick_gelu"):
        return arch, False, []
    if f"{arch}-quickgelu" in open_clip.list_models():
        return f"{arch}-quickgelu", False, [f"tag trained with QuickGELU: built as {arch}-quickgelu"]
    return arch, True, ["tag trained with QuickGELU: forced QuickGELU"]


def _cached_pretrained_file(pcfg: Mapping[str, Any]) -> str | None:
    """The local file of a pretrained tag, from the Hugging Face cache or OpenCLIP's URL cache; no network."""
    if pcfg.get("file"):
        return str(pcfg["file"])
    hub = pcfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        safe = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else None
        if safe is None and filename.endswith((".bin", ".pth")):
            safe = filename.rsplit(".", 1)[0] + ".safetensors"
        for name in filter(None, (safe, filename)):
            hit = try_to_load_from_cache(repo_id, name)
            if isinstance(hit, str):
                return hit
    url = pcfg.get("url", "")
    if url:
        cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if cached.is_file():
            return str(cached)
    return None


def _hub_file(repo_id: str, filename: str, text: str, *, required: bool = True) -> str | None:
    """A file of a Hub repo: from the cache, else downloaded unless offline."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, filename)
    if isinstance(hit, str):
        return hit
    if not hub_offline():
        try:
            return hf_hub_download(repo_id, filename)
        except Exception as e:  # noqa: BLE001
            if required:
                raise UserError(f"could not fetch {filename} of {text} ({_short(e)}); it is not in the local cache; "
                                "download it on a connected machine, or use local-dir:/path (works offline)") from e
            return None
    if required:
        raise UserError(f"{text} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it "
                        "on a connected machine, or use local-dir:/path/to/folder (works offline)")
    return None


def arch_from_metadata(path: str | os.PathLike) -> str | None:
    """The ``arch`` recorded in a safetensors file's metadata (as ``grace-bench convert`` writes it), else None."""
    path = Path(path)
    if not _is_safetensors(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            arch = (fh.metadata() or {}).get("arch")
    except Exception:  # noqa: BLE001 - unreadable files are reported by read_checkpoint_file
        return None
    if arch:
        from grace_bench.models.specs import check_arch

        return arch if arch.startswith(("local-dir:", "hf-hub:")) else check_arch(arch)
    return None


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors header start (8-byte length, then ``{``) with a plausible length, even if the file was cut
    short: such a file is read (and reported) as safetensors, never handed to the unpickler."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


# What the weights-only unpickler says when a pickle stream is well formed but names Python classes or calls
# functions it will not run; any other complaint ("Unsupported operand", "String is too long", bad persistent
# ids) means the bytes are not a sound pickle.
_PICKLED_CLASS = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_PICKLED_OBJECT_MARKERS = ("Can only create new object", "Can only build", "Trying to call reduce",
                           "must be imported to load")


def _weights_only_reason(e: BaseException) -> str:
    text = str(e)
    marker = "WeightsUnpickler error:"
    return text.split(marker, 1)[1].strip().split("\n")[0] if marker in text else text


def _pickled_global(e: pickle.UnpicklingError) -> str | None:
    """The class a genuine pickle names (``""`` when it names none but is still a genuine pickle), or None when
    the weights-only load failed because the bytes are not a valid pickle."""
    text = str(e)
    if "weights only load failed" not in text.lower():
        return None
    found = _PICKLED_CLASS.search(text)
    if found:
        return found.group(1)
    return "" if any(m in text for m in _PICKLED_OBJECT_MARKERS) else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({_short(e)}); fix or recreate the file") from e


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{path} is corrupt or unreadable ({why}); re-save or re-download it (--trust-pickle would "
                     "not help)")


def _unreadable(path: Path, e: Exception) -> UserError:
    return UserError(f"{path} is not a checkpoint grace-bench can read ({type(e).__name__}: {_short(e)}); expected "
                     "a PyTorch .pt/.pth/.bin file or a .safetensors file")


def _short(e: BaseException, n: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= n else text[: n - 3] + "..."
