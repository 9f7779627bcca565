"""``grace-bench convert``: rewrite any loadable checkpoint as a plain OpenCLIP state dict in safetensors.

The output carries metadata ``arch`` and ``source_format``, so it loads later as a bare path (no ``ARCH:`` needed)
and never needs unpickling again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from grace_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - registering the parser must not import torch
    import torch


def convert_checkpoint(src: str, dst: str | Path, *, arch: str | None = None, trust_pickle: bool = False,
                       base: str | None = None) -> dict:
    """Load ``src`` (a spec, or a path plus ``arch``) and write its full state dict to ``dst`` (safetensors, atomic).

    Returns a summary: ``dst``, ``arch``, ``source_format``, ``fingerprint`` (of the loaded model) and ``notes``.
    """
    from grace_bench.models.checkpoints import arch_from_metadata, load_checkpoint
    from grace_bench.models.specs import FileSpec, check_arch, parse_spec
    from grace_bench.utils.atomic import atomic_save_safetensors

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise UserError(f"convert writes safetensors; name the output {dst.with_suffix('.safetensors')}")
    spec = f"{check_arch(arch)}:{src}" if arch else str(src)
    parsed = parse_spec(spec)
    if isinstance(parsed, FileSpec) and parsed.arch is None and arch_from_metadata(parsed.path) is None:
        raise UserError(f"cannot tell the architecture of {src}; pass --arch ARCH (see `open_clip.list_models()`)")
    clip = load_checkpoint(spec, base=base, trust_pickle=trust_pickle)
    state = _unshared(clip.model.state_dict())
    fmt = str(clip.info.get("format", "unknown"))
    metadata = {"arch": clip.arch, "source_format": fmt, "source": str(src), "fingerprint": clip.fingerprint()}
    if clip.base_spec:
        metadata["base"] = clip.base_spec
    atomic_save_safetensors(dst, state, metadata=metadata)
    return {"dst": str(dst), "arch": clip.arch, "source_format": fmt, "fingerprint": clip.fingerprint(),
            "notes": list(clip.info.get("notes", []))}


def add_convert_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``convert`` subcommand (SRC DST --arch --base --trust-pickle); its handler is ``run_convert``."""
    parser = subparsers.add_parser(
        "convert",
        help="rewrite a checkpoint (any supported format) as an OpenCLIP state dict in .safetensors",
        description="Load SRC with the same sniffing as every other command and write its full OpenCLIP state dict "
                    "to DST (.safetensors, with arch metadata). Use it once on pickled checkpoints (wise-ft, FLYP) "
                    "so that later loads are safe.",
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint spec (ARCH:/path, runs/NAME, ...) or a path with --arch")
    parser.add_argument("dst", metavar="DST", help="output .safetensors file")
    parser.add_argument("--arch", help="OpenCLIP architecture of SRC when SRC is a bare path (e.g. ViT-B-32)")
    parser.add_argument("--base", help="model a visual-only SRC was fine-tuned from; its text tower is used")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow unpickling Python objects in SRC (only for files from a trusted source)")
    parser.set_defaults(func=run_convert)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    """Handler for ``grace-bench convert``: convert, print a one-line JSON summary, return 0."""
    summary = convert_checkpoint(args.src, args.dst, arch=args.arch, trust_pickle=args.trust_pickle, base=args.base)
    print(json.dumps(summary))
    return 0


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone tensors that share storage with an earlier one (safetensors refuses shared memory)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        out[name] = tensor.clone() if ptr is not None and ptr in seen else tensor
        if ptr is not None:
            seen.add(ptr)
    return out
