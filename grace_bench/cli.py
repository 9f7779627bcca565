"""The `grace-bench` command line: one subcommand per job; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from grace_bench import __version__
from grace_bench.errors import UserError, one_line_message

EXIT_USER_ERROR = 2


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="three-axis evaluation of a CLIP checkpoint (ID, OOD, adversarial)",
                       description="Zero-shot accuracy on every dataset of a suite, the adversarial axis, and the "
                                   "OOD / Nat-adv / Adv / HM aggregates. With no checkpoint: micro-CLIP on micro.")
    p.add_argument("checkpoint", nargs="?",
                   help="checkpoint spec: micro | ARCH:TAG | ARCH:/path | local-dir:/p | hf-hub:org/name | runs/NAME "
                        "(default: the suite's model: micro-CLIP for micro, ViT-B-32:openai for imagenet)")
    p.add_argument("--suite", help="suite name (default: micro for micro models, else imagenet)")
    p.add_argument("--data-root", type=Path, help="root folder holding the ImageNet-family datasets")
    p.add_argument("--data-layout", choices=["auto", "folders", "wds"], default="auto",
                   help="how the ImageNet family is held under --data-root: image folders, CLIP_benchmark "
                        "webdataset shards (wds_<name>/test/*.tar), or auto (folders if present, else shards)")
    p.add_argument("--datasets", nargs="+", help="only these datasets of the suite")
    p.add_argument("--base", help="base checkpoint spec for visual-only checkpoints (text tower source)")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a checkpoint (only if trusted)")
    p.add_argument("--attack", help="none | pgd[steps=10,step=1/255] | apgd-ce[restarts=1,iters=100] | aa-standard | "
                                    "aa-plus | aa-rand | custom:apgd-ce[...],apgd-t[...],... ; a setting left out "
                                    "takes AutoAttack standard's value, so bare apgd-ce = apgd-ce[restarts=1,"
                                    "iters=100] (the default); results record this explicit name")
    p.add_argument("--eps", help="perturbation budget, e.g. 4/255 (default 4/255), or a comma-separated list "
                                 "(2/255,4/255): one result per ε, the clean pass shared")
    p.add_argument("--protocol", help="a named protocol preset: grace (default: the suite's settings), tecoa, fare, "
                                      "tga-zsr, pmg-aft; `list` prints every preset with its settings and sources. "
                                      "Explicit --attack/--eps/--n-adv/--seed/... override it (recorded as custom)")
    p.add_argument("--norm", default="Linf", help="Linf or L2")
    p.add_argument("--n-adv", type=int, help="number of adversarial examples (micro: 250; imagenet: 5000 ids)")
    p.add_argument("--adv-datasets", nargs="+", help="datasets to attack (default: the ID dataset)")
    p.add_argument("--out", type=Path, default=Path("results"), help="result directory (default: results)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images of each dataset")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="clean-eval precision")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader workers for image folders and shards (default: one per CPU core but one, "
                        "at most 16; 0 for in-memory suites)")
    p.add_argument("--allow-empty-classes", action="store_true",
                   help="evaluate image folders even if some class folders hold no readable image (counted in "
                        "the result); by default that is an error")
    p.add_argument("--templates", type=Path, help="file with one prompt template per line ('{}' = class name)")
    p.add_argument("--classnames", type=Path, help="file with one class name per line")
    p.add_argument("--seed", type=int, default=None, help="attack seed (default: the protocol's, 0)")
    p.add_argument("--label", help="name for this model in tables")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    if args.protocol == "list":  # no torch needed
        from grace_bench.eval.protocols import protocols_text

        print(protocols_text())
        return 0
    from grace_bench.eval.config import EvalConfig
    from grace_bench.eval.report import print_summary
    from grace_bench.eval.run import run_eval, summary_location

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be a positive number of images")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    cfg = EvalConfig(
        checkpoint=args.checkpoint, suite=args.suite, data_root=args.data_root, data_layout=args.data_layout,
        base=args.base, trust_pickle=args.trust_pickle, attack=args.attack, eps=args.eps, norm=args.norm,
        n_adv=args.n_adv,
        adv_datasets=args.adv_datasets, datasets=args.datasets, out=args.out, limit=args.limit,
        precision=args.precision, batch_size=args.batch_size, device=args.device, workers=args.workers,
        allow_empty_classes=args.allow_empty_classes,
        templates_file=args.templates, classnames_file=args.classnames, seed=args.seed, label=args.label,
        protocol=args.protocol,
        progress=not args.no_progress,
    )
    summary = run_eval(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(summary)
        summary_path, results_dir = summary_location(cfg, summary)
        print(f"summary: {summary_path}\nresults: {results_dir}/")
    return 0


def _add_micro_parser(sub) -> None:
    p = sub.add_parser("micro", help="the built-in micro suite and micro-CLIP")
    msub = p.add_subparsers(dest="micro_cmd", required=True)
    pre = msub.add_parser(
        "pretrain", help="rerun micro-CLIP's pretraining into the cache folder (the shipped weights stay the default)",
        description="Rerun the pretraining recipe of micro-CLIP and write the weights into the cache folder "
                    "($GRACE_BENCH_CACHE). The result depends on the CPU, the thread count and library versions, so "
                    "it usually differs from the shipped weights, which every command keeps using for `micro`; "
                    "evaluate a rebuild with `grace-bench eval micro-clip:/path/to/rebuild.safetensors`.")
    pre.add_argument("--no-progress", action="store_true")
    pre.set_defaults(func=_run_micro_pretrain)
    info = msub.add_parser("info", help="micro-CLIP's shipped weights (and any rebuild) and the micro dataset sizes")
    info.set_defaults(func=_run_micro_info)


def _run_micro_pretrain(args: argparse.Namespace) -> int:
    from grace_bench.models.micro import SHIPPED_WEIGHTS, rebuild_micro_weights, weights_fingerprint

    out = rebuild_micro_weights(progress=not args.no_progress)
    shipped = weights_fingerprint(SHIPPED_WEIGHTS)
    print(f"micro-CLIP rebuilt in {out['seconds']:.0f} s ({out['image_steps_run']} image steps, "
          f"val accuracy {out['val_accuracy']:.3f}): {out['path']}")
    print(f"  fingerprint of the rebuild:     {out['fingerprint']}")
    print(f"  fingerprint of shipped weights: {shipped}  ({SHIPPED_WEIGHTS})")
    if out["fingerprint"] == shipped:
        print("The rebuild is bit-identical to the shipped weights.")
    else:
        print("The rebuild differs from the shipped weights: pretraining depends on the CPU's instruction set, the "
              "thread count and library versions. Every command still uses the shipped weights for `micro`.")
    print(f"Evaluate the rebuild with: grace-bench eval micro-clip:{out['path']}")
    return 0


def _run_micro_info(args: argparse.Namespace) -> int:
    from grace_bench.data.micro import MICRO_DATASETS, micro_dataset
    from grace_bench.models.micro import SHIPPED_WEIGHTS, rebuilt_weights_path, weights_fingerprint

    print(f"micro-CLIP shipped weights: {SHIPPED_WEIGHTS}")
    print(f"  fingerprint: {weights_fingerprint(SHIPPED_WEIGHTS)}  (spec `micro`)")
    rebuilt = rebuilt_weights_path()
    if rebuilt.is_file():
        print(f"micro-CLIP rebuild (grace-bench micro pretrain): {rebuilt}")
        print(f"  fingerprint: {weights_fingerprint(rebuilt)}  (spec `micro-clip:{rebuilt}`)")
    else:
        print("micro-CLIP rebuild: none (`grace-bench micro pretrain` makes one in the cache folder)")
    for split in ("train", "val", "test"):
        print(f"micro/{split}: {len(micro_dataset('micro', split))} images")
    for name in MICRO_DATASETS[1:]:
        print(f"{name}: {len(micro_dataset(name))} images")
    return 0


# Modules that register subcommands: (module, function). Each must import without torch (``--help`` stays fast).
SUBCOMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("grace_bench.models.convert", "add_convert_parser"),
    ("grace_bench.finetune.cli", "add_finetune_parser"),
    ("grace_bench.finetune.cli", "add_wise_parser"),
    ("grace_bench.geometry.cli", "add_geometry_parser"),
    ("grace_bench.plots.cli", "add_plot_parser"),
    ("grace_bench.leaderboard.cli", "add_leaderboard_parser"),
    ("grace_bench.study.cli", "add_compare_parser"),
)


class GraceArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that can defer adding arguments whose definitions need heavy imports (torch).

    ``defer(add)`` runs ``add(parser)`` just before this parser parses or prints its help, so building the
    whole command tree (and ``grace-bench --help``) imports nothing heavy.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[Callable[[argparse.ArgumentParser], None]] = []

    def defer(self, add: Callable[[argparse.ArgumentParser], None]) -> None:
        self._deferred.append(add)

    def _run_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):
        self._run_deferred()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._run_deferred()
        return super().format_help()


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every (nested) subcommand parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += _all_parsers(child)
    return found


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` on every command and subcommand (given anywhere on the line)."""
    from grace_bench.utils.runtime_info import THREADS_HELP

    for p in _all_parsers(parser):
        p.add_argument("--threads", type=int, metavar="N", default=argparse.SUPPRESS, help=THREADS_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = GraceArgumentParser(
        prog="grace-bench",
        description="Robust fine-tuning of CLIP (GRACE and baselines), three-axis evaluation and geometry.",
    )
    parser.add_argument("--version", action="version", version=f"grace-bench {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_eval_parser(sub)
    _add_micro_parser(sub)
    for module, name in SUBCOMMAND_MODULES:
        getattr(importlib.import_module(module), name)(sub)
    _add_threads_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `grace-bench` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        argv = ["eval"]  # the embedded default: micro-CLIP on the micro suite
    args = parser.parse_args(argv)
    args.argv = argv  # the command as given (recorded by commands that report how their output was made)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        from grace_bench.utils.runtime_info import apply_threads

        apply_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {one_line_message(exc)}", file=sys.stderr)  # one line even when raised in a loader worker
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
