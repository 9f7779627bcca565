"""``grace-bench compare``: the whole study end to end (pretrain, fine-tune, WiSE-FT, eval, geometry, report)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from grace_bench.errors import UserError


def add_compare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``compare`` on the top-level CLI's subparsers."""
    from grace_bench.study.recipe import BY_LABEL

    p = subparsers.add_parser(
        "compare", help="run the whole study: every method, seeds, eval, geometry, leaderboard and figures",
        description="Fine-tunes every method under one budget, evaluates every checkpoint, runs the geometry "
                    "diagnostics on the first seed, and writes OUT/study.md, study.json, leaderboard/ and figures/. "
                    "Every stage resumes: rerun the same command after a kill.")
    p.add_argument("--suite", default="micro", help="micro (default) or imagenet (with --data-root)")
    p.add_argument("--data-root", help="root folder of the ImageNet-family datasets")
    p.add_argument("--base", help="zero-shot checkpoint spec (default: micro, or ViT-B-32:openai for imagenet)")
    p.add_argument("--methods", nargs="+", metavar="M",
                   help=f"rows to run (zero-shot always; wise-ft adds ft): {', '.join(BY_LABEL)}")
    p.add_argument("--seeds", type=int, help="number of seeds of the main rows (default 3; --quick 1)")
    p.add_argument("--steps", type=int, help="training steps of every method (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="a reduced study for CI: few methods, steps and images")
    p.add_argument("--tune", action="store_true",
                   help="first choose each method's lr on the val split (writes WORK/tuning.json) and use it")
    p.add_argument("--lr-file", type=Path, help="tuning.json whose selected lrs to use (default: the shipped one)")
    p.add_argument("--work", type=Path, help="runs and raw results (default: studies/SUITE[-quick])")
    p.add_argument("--out", type=Path, help="tables and figures (default: leaderboards/SUITE[-quick])")
    p.add_argument("--stages", nargs="+", help="only these stages: pretrain finetune wise eval geometry report")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_compare)
    return p


def run_compare(args: argparse.Namespace) -> int:
    """Run ``grace-bench compare``; prints the main table, the claims and where everything went."""
    from grace_bench.study.recipe import study_recipe
    from grace_bench.study.runner import STAGES, StudyRun, run_study
    from grace_bench.utils.paths import check_writable_dir

    stages = tuple(args.stages or STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise UserError(f"unknown stage '{bad[0]}'; choose from: {' '.join(STAGES)}")
    if args.lr_file is not None and not args.lr_file.is_file():
        raise UserError(f"--lr-file {args.lr_file} does not exist; pass a tuning.json written by compare --tune")
    suffix = "-quick" if args.quick else ""
    work = args.work or Path("studies") / f"{args.suite}{suffix}"
    out = args.out or Path("leaderboards") / f"{args.suite}{suffix}"
    check_writable_dir(work, "--work")
    check_writable_dir(out, "--out")
    recipe = study_recipe(args.suite, quick=args.quick, methods=args.methods, seeds=args.seeds, steps=args.steps,
                          base=args.base, data_root=args.data_root, lr_file=args.lr_file)
    progress = not args.no_progress
    t0 = time.perf_counter()
    if args.tune:
        from grace_bench.study.recipe import load_tuned_lr
        from grace_bench.study.tune import tune

        print("== tune (lr on the val split)")
        tune(recipe, work, progress=progress, device=args.device)
        recipe.lr, recipe.lr_source = load_tuned_lr(work / "tuning.json"), f"{work / 'tuning.json'}"
    run = StudyRun(recipe, work, out, device=args.device, progress=progress)
    run.command = "grace-bench " + " ".join(shlex.quote(a) for a in _argv(args))
    report = run_study(run, stages)
    if report:
        print(report["markdown"].split("## Main comparison (Table 6 style)", 1)[-1].split("## LoRA")[0].strip())
        print(f"\nwrote {out / 'study.md'}, {out / 'study.json'}, {out / 'leaderboard'} and "
              f"{len(report['figures'])} figures; total {time.perf_counter() - t0:.0f} s")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line as given (global options such as ``--threads`` may come before ``compare``)."""
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    return argv if "compare" in argv else ["compare", *argv]
