"""``grace-bench geometry hessian|sharpness|landscape|features|weights CKPT [--ref CKPT] ...``.

Each subcommand writes ``OUT/geometry-<kind>-<fp12>.json`` (atomic; the JSON is written last and marks
the result complete) and ``OUT/geometry-<kind>-<fp12>.npz`` (arrays). A rerun with the same settings
skips finished work (the label, device, output folder and flag order do not count as settings); a
file made with other settings is refused unless ``--force``. Landscape grids resume after a kill from
``OUT/.geometry-state/``.

Under torchrun, geometry runs on rank 0 alone, on its ``cuda:LOCAL_RANK`` (``--device cuda``/``auto``); the
other ranks return at once without joining a process group (so none waits on a collective timeout while rank 0
works). Launch it as one process; the extra GPUs are not used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# how library messages name the run parameters, on the command line
_FLAG_NAMES = {"force": "--force", "out": "--out", "ref": "--ref CKPT"}


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every subcommand that choose the model and where and how to run, never a number."""
    p.add_argument("checkpoint",
                   help="checkpoint spec: micro | ARCH:TAG | ARCH:/path | local-dir:/p | hf-hub:... | runs/NAME")
    p.add_argument("--ref", help="reference checkpoint spec (default: the checkpoint's base model, if it records one)")
    p.add_argument("--base", help="base checkpoint spec for visual-only checkpoints (text tower source)")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a checkpoint (only if trusted)")
    p.add_argument("--out", type=Path, default=Path("results"), help="result directory (default: results)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--label", help="name for this model in tables and figures")
    p.add_argument("--force", action="store_true", help="recompute and overwrite an existing result")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_geometry_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``geometry`` and one subcommand per registered kind (flags built from its config class)."""
    from grace_bench.geometry.config import add_arguments
    from grace_bench.geometry.registry import kinds

    p = subparsers.add_parser("geometry", help="geometry diagnostics: Hessian, sharpness, landscape, features, weights",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="geometry_kind", required=True)
    for name, kind in kinds().items():
        s = sub.add_parser(name, help=kind.help, description=kind.help)
        _add_run_flags(s)
        add_arguments(s, kind.config)
    p.set_defaults(func=run_geometry)
    return p


def run_geometry(args: argparse.Namespace) -> int:
    """Run the geometry subcommand in ``args`` and write its JSON + NPZ; returns the exit code."""
    from grace_bench.geometry.config import flag_names, from_namespace
    from grace_bench.geometry.registry import get_kind

    kind = get_kind(args.geometry_kind)
    config = from_namespace(kind.config, args)
    flags = flag_names(kind.config)
    config.validate(lambda name: flags.get(name, name))

    from grace_bench.geometry.api import compute
    from grace_bench.models.checkpoints import load_checkpoint
    from grace_bench.runtime import read_launch, resolve_device

    launch = read_launch()
    device = resolve_device(args.device, launch)  # under torchrun: cuda:LOCAL_RANK, after every launch check
    if launch.rank != 0:
        return 0  # rank 0 computes; see the module docstring
    if launch.distributed:
        print(f"note: geometry runs on rank 0 only; the other {launch.world_size - 1} process(es) exited")
    clip = load_checkpoint(args.checkpoint, base=args.base, trust_pickle=args.trust_pickle, device=device)
    path, result = compute(kind.name, clip, config, args.out, ref=args.ref, label=args.label, force=args.force,
                           progress=not args.no_progress, trust_pickle=args.trust_pickle, names=_FLAG_NAMES)
    if result is None:
        print(f"{path} is up to date (same checkpoint and settings); pass --force to recompute")
        return 0
    line = kind.headline(result.record) if kind.headline else None
    print(f"{line} -> {path}" if line else f"wrote {path}")
    return 0
