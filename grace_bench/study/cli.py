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
    from grace_bench.study.search_space import SEARCH_SEED, TRIALS

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
    p.add_argument("--seeds", type=int, help="number of seeds of the main rows (default 5; --quick 1)")
    p.add_argument("--steps", type=int, help="training steps of every method (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="a reduced study for CI: few methods, steps and images")
    p.add_argument("--tune", action="store_true",
                   help="first tune each method's lr and own knobs on the val split, the same number of trials for "
                        "every method (writes WORK/tuning.json), and use the choices")
    p.add_argument("--tune-only", action="store_true", help="with --tune: stop after writing WORK/tuning.json")
    p.add_argument("--trials", type=int, help=f"--tune: trials per method (default {TRIALS})")
    p.add_argument("--tune-seed", type=int, help=f"--tune: seed of the random search (default {SEARCH_SEED})")
    p.add_argument("--jobs", type=int,
                   help="fine-tuning runs, evaluations and geometry checkpoints at once, each in its own process "
                        "with --threads threads; numbers do not depend on it (default on CPU: one job per core, at "
                        "most 4, with 1 thread each unless --threads is given; 1 with --quick)")
    p.add_argument("--lr-file", type=Path,
                   help="tuning.json whose selected lrs and knobs to use (default: the shipped one)")
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
    from grace_bench.study.parallel import resolve_jobs

    # --quick: runs of seconds, where starting worker processes costs more than it saves
    args.jobs = resolve_jobs(1 if args.jobs is None and args.quick else args.jobs, getattr(args, "threads", None),
                             args.device)
    if (args.tune_only or args.trials is not None or args.tune_seed is not None) and not args.tune:
        raise UserError("--tune-only, --trials and --tune-seed apply to tuning; add --tune")
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials must be at least 1, got {args.trials}")
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
        from grace_bench.study.recipe import load_tuning
        from grace_bench.study.search_space import SEARCH_SEED, TRIALS
        from grace_bench.study.tune import tune

        trials = TRIALS if args.trials is None else args.trials
        print(f"== tune (lr and each method's knobs on the val split, {trials} trials per method)")
        tune(recipe, work, trials=trials, seed=SEARCH_SEED if args.tune_seed is None else args.tune_seed,
             jobs=args.jobs, progress=progress, device=args.device)
        lrs, knobs = load_tuning(work / "tuning.json")  # the rows tuned now; the others keep the shipped choices
        recipe.lr = {**recipe.lr, **lrs}
        recipe.knobs = {**{k: v for k, v in recipe.knobs.items() if k not in lrs}, **knobs}
        recipe.lr_source = f"{work / 'tuning.json'}"
        if args.tune_only:
            print(f"wrote {work / 'tuning.json'}; total {time.perf_counter() - t0:.0f} s")
            return 0
    run = StudyRun(recipe, work, out, device=args.device, progress=progress, jobs=args.jobs)
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
