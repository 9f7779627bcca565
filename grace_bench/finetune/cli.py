"""``grace-bench finetune`` and ``grace-bench wise`` subcommands.

Every finetune flag defaults to "not given", so the resolution order is: global defaults < the method's
paper defaults < the suite's training defaults < ``--config FILE`` < flags (``config.json`` records the source of
each value). Method settings come from ``--<setting>`` flags (listed per
method in ``--help``) or ``--method-arg KEY=VALUE``. Multi-GPU: ``torchrun --nproc_per_node N -m grace_bench
finetune ...`` (``--batch-size`` is the global batch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from grace_bench.errors import UserError

_METHOD_PREFIX = "m__"


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    g = p.add_argument_group("run")
    g.add_argument("--method", default=S,
                   help="ft, flyp, tecoa, fare, pmg-aft, grace, sim-clip, advclip-lora, laat (default: ft)")
    g.add_argument("--base", default=S, help="checkpoint spec to start from (default: micro)")
    g.add_argument("--suite", default=S, help="suite whose ID training split is used and whose training defaults "
                                              "fill unset settings (default: micro)")
    g.add_argument("--out", default=S, help="run directory, e.g. runs/NAME")
    g.add_argument("--data-root", dest="data_root", default=S, help="dataset root (ImageNet-family suites)")
    g.add_argument("--config", default=None, help="YAML or JSON file of config keys (flags override it)")
    g.add_argument("--resume", action="store_true", default=S, help="continue the run in --out from its checkpoint")
    o = p.add_argument_group("optimisation (unset: the suite's default, e.g. micro's study budget, else the "
                             "method's paper default)")
    o.add_argument("--epochs", type=float, default=S)
    o.add_argument("--max-steps", dest="max_steps", type=int, default=S, help="overrides --epochs")
    o.add_argument("--batch-size", dest="batch_size", type=int, default=S, help="global batch (all processes)")
    o.add_argument("--lr", type=float, default=S)
    o.add_argument("--weight-decay", dest="weight_decay", type=float, default=S)
    o.add_argument("--warmup-steps", dest="warmup_steps", type=int, default=S)
    o.add_argument("--grad-clip", dest="grad_clip", type=float, default=S, help="max gradient norm (0: off; default 1)")
    o.add_argument("--seed", type=int, default=S)
    o.add_argument("--precision", choices=["fp32", "bf16"], default=S, help="bf16 = autocast (default fp32)")
    o.add_argument("--grad-checkpointing", dest="grad_checkpointing", action="store_true", default=S)
    o.add_argument("--max-train-samples", dest="max_train_samples", type=int, default=S)
    lo = p.add_argument_group("LoRA (rank 0 = full fine-tuning)")
    lo.add_argument("--lora-rank", dest="lora_rank", type=int, default=S)
    lo.add_argument("--lora-alpha", dest="lora_alpha", type=float, default=S, help="default 2*rank")
    lo.add_argument("--lora-dropout", dest="lora_dropout", type=float, default=S)
    lo.add_argument("--lora-targets", dest="lora_targets", default=S,
                    help="comma list of attn_in,attn_out,mlp_fc,mlp_proj or parameter-name patterns")
    lo.add_argument("--lora-towers", dest="lora_towers", default=S, help="vision and/or text (default: the method's)")
    lo.add_argument("--lora-split-qkv", dest="lora_split_qkv", action="store_true", default=S,
                    help="one adapter per q, k, v slice of attn.in_proj_weight (default: the method's)")
    lo.add_argument("--lora-scaling", dest="lora_scaling", choices=["standard", "sqrt"], default=S,
                    help="alpha/r (standard) or alpha/sqrt(r) (default: the method's, else standard)")
    b = p.add_argument_group("bookkeeping")
    b.add_argument("--log-every", dest="log_every", type=int, default=S)
    b.add_argument("--eval-every", dest="eval_every", type=int, default=S, help="steps (0: every epoch)")
    b.add_argument("--val-split", dest="val_split", default=S)
    b.add_argument("--val-max-samples", dest="val_max_samples", type=int, default=S)
    b.add_argument("--save-every", dest="save_every", type=int, default=S, help="steps (0: every epoch)")
    b.add_argument("--keep-last", dest="keep_last", type=int, default=S, help="checkpoints to keep (default 2)")
    b.add_argument("--num-workers", dest="num_workers", type=int, default=S)
    b.add_argument("--device", default=S, help="auto, cpu, cuda")
    b.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    b.add_argument("--trust-pickle", dest="trust_pickle", action="store_true", default=S)


def _add_method_flags(p: argparse.ArgumentParser) -> None:
    from grace_bench.finetune.methods import get_method, list_methods

    owners: dict[str, list[str]] = {}
    helps: dict[str, str] = {}
    for name in list_methods():
        for key, hyper in get_method(name).defaults.items():
            owners.setdefault(key, []).append(f"{name}={hyper.value!r}")
            helps.setdefault(key, hyper.help)
    g = p.add_argument_group("method settings (each applies to the methods listed with their defaults)")
    for key in sorted(owners):
        flag = "--" + key.replace("_", "-")
        try:
            g.add_argument(flag, dest=_METHOD_PREFIX + key, default=argparse.SUPPRESS, metavar="V",
                           help=f"{helps[key]} [{', '.join(owners[key])}]")
        except argparse.ArgumentError:  # clashes with a trainer flag: reachable through --method-arg
            continue
    g.add_argument("--method-arg", dest="method_arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any method setting, repeatable")


def add_finetune_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``grace-bench finetune``."""
    p = subparsers.add_parser(
        "finetune", help="fine-tune a CLIP checkpoint with GRACE or a baseline",
        description="Train on a suite's ID training split and write runs/NAME (config.json, model.safetensors, "
                    "checkpoints/, log.jsonl). Under torchrun this runs DDP.")
    _add_run_flags(p)
    if hasattr(p, "defer"):  # the method registry imports torch: add its flags only when `finetune` is used
        p.defer(_add_method_flags)
    else:
        _add_method_flags(p)
    p.set_defaults(func=run_finetune)
    return p


def config_from_args(args: argparse.Namespace):
    """The ``FinetuneConfig`` of parsed finetune arguments (file first, then flags)."""
    from grace_bench.finetune.config import FIELD_NAMES, FROM_CLI, FinetuneConfig, config_from_dict, load_config_file

    cfg = FinetuneConfig()
    if getattr(args, "config", None):
        cfg = config_from_dict(load_config_file(args.config), cfg, source=f"--config {args.config}")
    given = vars(args)
    cfg = config_from_dict({k: v for k, v in given.items() if k in FIELD_NAMES and k != "method_args"}, cfg,
                           source=FROM_CLI)
    method_args: dict[str, Any] = {k[len(_METHOD_PREFIX):]: v for k, v in given.items()
                                   if k.startswith(_METHOD_PREFIX)}
    for item in given.get("method_arg") or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--method-arg '{item}' must look like KEY=VALUE")
        method_args[key.strip().replace("-", "_")] = _parse_value(value)
    if method_args:
        cfg = config_from_dict({"method_args": method_args}, cfg, source=FROM_CLI)
    return cfg


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_finetune(args: argparse.Namespace) -> int:
    """Run ``grace-bench finetune``; prints where the run went."""
    from grace_bench.finetune.trainer import train

    result = train(config_from_args(args))
    from grace_bench.finetune.distributed import current_dist_info

    if current_dist_info().is_main:
        acc = "n/a" if result.val_acc is None else f"{result.val_acc:.4f}"
        print(f"finished {result.run_dir} at step {result.step}/{result.total_steps}; val accuracy {acc}; "
              f"model: {Path(result.run_dir) / 'model.safetensors'}")
    return 0


def add_wise_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``grace-bench wise``."""
    p = subparsers.add_parser(
        "wise", help="WiSE-FT: interpolate a zero-shot and a fine-tuned checkpoint",
        description="Writes OUT/alpha_X/{config.json,model.safetensors} for each alpha; --eval evaluates each.")
    p.add_argument("zero_shot", help="zero-shot checkpoint spec (alpha = 0)")
    p.add_argument("fine_tuned", help="fine-tuned checkpoint spec (alpha = 1), e.g. runs/ft")
    p.add_argument("--alpha", default="0:1:0.1", help="start:stop:step or a comma list (default 0:1:0.1)")
    p.add_argument("--out", default=None, help="output folder (default: runs/wise-<fine-tuned name>)")
    p.add_argument("--base", default=None, help="base spec for visual-only checkpoints")
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--eval", action="store_true", help="evaluate every alpha with `grace-bench eval`")
    p.add_argument("--suite", default=None, help="suite for --eval")
    p.add_argument("--data-root", default=None)
    p.add_argument("--datasets", nargs="+", default=None, help="only these datasets of the suite (--eval)")
    p.add_argument("--eval-out", default="results", help="result folder for --eval")
    p.add_argument("--attack", default=None)
    p.add_argument("--eps", default=None)
    p.add_argument("--n-adv", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_wise)
    return p


def run_wise(args: argparse.Namespace) -> int:
    """Run ``grace-bench wise``: write each interpolated checkpoint, optionally evaluate them."""
    from grace_bench.finetune.wise import parse_alphas, write_wise_runs
    from grace_bench.utils.atomic import atomic_write_json

    alphas = parse_alphas(args.alpha)
    out = Path(args.out) if args.out else Path("runs") / f"wise-{Path(args.fine_tuned.rstrip('/')).name}"
    paths = write_wise_runs(args.zero_shot, args.fine_tuned, alphas, out, base=args.base,
                            trust_pickle=args.trust_pickle, progress=args.progress)
    for alpha, path in zip(alphas, paths):
        print(f"alpha={alpha:g}: {path}")
    if not args.eval:
        return 0
    from grace_bench.eval.config import EvalConfig
    from grace_bench.eval.run import run_eval

    curve = []
    for alpha, path in zip(alphas, paths):
        cfg = EvalConfig(checkpoint=str(path), suite=args.suite, out=Path(args.eval_out), attack=args.attack,
                         eps=args.eps, n_adv=args.n_adv, limit=args.limit, device=args.device,
                         data_root=Path(args.data_root) if args.data_root else None, datasets=args.datasets,
                         progress=args.progress)  # labels come from each run (endpoints keep their models' labels)
        summary = run_eval(cfg)
        curve.append({"alpha": alpha, "checkpoint": str(path), "aggregates": summary.get("aggregates", {})})
    atomic_write_json(out / "wise_curve.json", {"zero_shot": args.zero_shot, "fine_tuned": args.fine_tuned,
                                                "curve": curve})
    print(f"alpha curve: {out / 'wise_curve.json'}")
    return 0
