"""Everything `grace-bench eval` checks before it loads a model or a dataset, and the checks that need data.

``plan_eval`` validates every argument of an ``EvalConfig`` (suite, attack spec, eps, norm, ``n_adv``, dataset
names, prompt files, numeric settings) and makes ``--out`` writable, so a bad value costs seconds, not a clean
pass. ``adv_indices_for`` checks ``n_adv`` against the loaded dataset before the clean pass starts.

A protocol preset (``cfg.protocol``, see ``grace_bench.eval.protocols``) supplies the attack, the ε list, the
images per dataset, the datasets, the templates and the seed; explicit settings that differ from the preset's
make the run ``custom`` (recorded with the preset it started from).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from grace_bench.data.suites import DatasetSpec, Suite, default_checkpoint_for, get_suite, suite_for_arch
from grace_bench.errors import UserError
from grace_bench.eval.config import EvalConfig
from grace_bench.eval.protocols import (
    ALL,
    DEFAULT_PROTOCOL,
    ResolvedProtocol,
    get_protocol,
    parse_eps_list,
    resolve_protocol,
)
from grace_bench.models.clip_model import ClipModel
from grace_bench.utils.paths import ensure_writable_dir


def read_text_list(path: Path, what: str, need_placeholder: bool = False) -> list[str]:
    """Non-empty lines of a UTF-8 file (templates or class names)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise UserError(f"cannot read {what} file {path}: {exc.strerror}; check the path") from exc
    if not lines:
        raise UserError(f"{what} file {path} is empty; put one entry per line")
    if need_placeholder and any("{}" not in ln for ln in lines):
        bad = next(ln for ln in lines if "{}" not in ln)
        raise UserError(f"template '{bad}' in {path} has no '{{}}' placeholder for the class name; add one")
    return lines


def default_suite_for(clip: ClipModel) -> str:
    """The suite ``clip`` is evaluated on when none is named (the suites' ``model_archs``)."""
    return suite_for_arch(clip.arch)


def prompt_config(cfg: EvalConfig, suite: Suite) -> tuple[list[str], list[str]]:
    preset = get_protocol(cfg.protocol or DEFAULT_PROTOCOL).templates
    templates = (read_text_list(cfg.templates_file, "templates", True) if cfg.templates_file
                 else list(preset) if preset else list(suite.templates))
    if cfg.classnames_file and any(d.prompts is not None for d in suite.datasets):
        raise UserError(f"suite '{suite.name}' takes class names per dataset, so one classnames_file (--classnames) "
                        "cannot serve; put a classnames.txt in each dataset's folder instead (docs/zero-shot-data.md)")
    classnames = read_text_list(cfg.classnames_file, "class names") if cfg.classnames_file else list(suite.classnames)
    if len(classnames) != len(suite.classnames):
        raise UserError(
            f"class-name file has {len(classnames)} names but suite '{suite.name}' has {len(suite.classnames)} classes"
        )
    return templates, classnames


@dataclass
class EvalPlan:
    """The validated arguments of one evaluation (everything checked before any data or model is loaded)."""

    suite: Suite | None
    checkpoint: str
    attack: str
    attack_kind: str
    eps: str
    norm: str
    n_adv: int | str
    templates: list[str] | None = None
    classnames: list[str] | None = None
    eps_list: tuple[str, ...] = ()
    protocol: ResolvedProtocol | None = None
    seed: int = 0
    n_adv_given: bool = False  # n_adv came from cfg.n_adv (then it must fit every attacked dataset)

    def settings(self) -> dict:
        """The effective protocol settings (recorded in every result)."""
        preset = self.protocol.preset if self.protocol else get_protocol(DEFAULT_PROTOCOL)
        return {"attack": self.attack, "eps": list(self.eps_list), "norm": self.norm, "n_adv": self.n_adv,
                "n_adv_for": {} if self.n_adv_given else dict(preset.n_adv_for), "seed": self.seed,
                "templates": "suite" if preset.templates is None else list(preset.templates),
                "subset_ids": preset.subset_ids}


def peek_arch(spec: str) -> str | None:
    """The architecture a checkpoint spec names, read without loading weights (None when it cannot tell)."""
    from grace_bench.models.checkpoints import arch_from_metadata
    from grace_bench.models.specs import FileSpec, MicroSpec, PretrainedSpec, RunDirSpec, parse_spec

    parsed = parse_spec(spec)  # a missing file or unknown form fails here, before anything is written
    if isinstance(parsed, MicroSpec):
        return "micro-clip"
    if isinstance(parsed, PretrainedSpec):
        return parsed.arch
    if isinstance(parsed, FileSpec):
        return parsed.arch or arch_from_metadata(parsed.path)
    if isinstance(parsed, RunDirSpec):
        try:
            return json.loads(parsed.config.read_text()).get("arch")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
    return "local"  # local-dir / hf-hub: an OpenCLIP model, evaluated on imagenet by default


def plan_eval(cfg: EvalConfig, clip: ClipModel | None = None) -> EvalPlan:
    """Check every argument of ``cfg`` and make ``cfg.out`` writable; raise ``UserError`` before any work."""
    from grace_bench.attacks.threat import (
        canonical_attack,
        check_eps_for_norm,
        format_eps,
        parse_attack_spec,
        parse_eps,
        parse_norm,
    )

    for name, value, low in (("limit", cfg.limit, 1), ("batch_size", cfg.batch_size, 1),
                             ("adv_batch_size", cfg.adv_batch_size, 1), ("workers", cfg.workers, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise UserError(f"{name} (--{name.replace('_', '-')}) must be an integer >= {low}, got {value!r}")
    if cfg.precision not in ("fp32", "bf16"):
        raise UserError(f"precision (--precision) must be fp32 or bf16, got {cfg.precision!r}")
    checkpoint = cfg.checkpoint or default_checkpoint_for(cfg.suite)
    arch = clip.arch if clip is not None else peek_arch(checkpoint)
    if cfg.base:
        from grace_bench.models.specs import parse_spec

        parse_spec(cfg.base)
    if cfg.data_root is not None and not Path(cfg.data_root).expanduser().is_dir():
        raise UserError(f"data_root (--data-root) {cfg.data_root} is not a folder; give the folder holding the "
                        "datasets")
    suite_name = cfg.suite
    if suite_name is None and arch is not None:
        suite_name = suite_for_arch(arch)
    suite = get_suite(suite_name) if suite_name else None
    if suite is not None and suite.needs_root and cfg.data_root is None:
        raise UserError(f"suite '{suite.name}' reads its datasets from disk; pass --data-root DIR (data_root), the "
                        "folder holding them")
    defaults = (suite or get_suite(suite_for_arch("*"))).eval_defaults()  # unknown arch: any-model suite's
    preset = get_protocol(cfg.protocol or DEFAULT_PROTOCOL)
    attack = canonical_attack(cfg.attack or preset.attack or defaults["attack"])  # what runs is what is recorded
    attack_kind = parse_attack_spec(attack).kind
    norm = parse_norm(cfg.norm)
    preset_eps = tuple(preset.eps or (defaults["eps"],))
    given_eps = parse_eps_list(cfg.eps)
    eps_list = tuple(format_eps(e) if _is_eps(e) else e for e in (given_eps or preset_eps))
    for e in eps_list:
        check_eps_for_norm(parse_eps(e), norm)
    n_adv = cfg.n_adv if cfg.n_adv is not None else (preset.n_adv if preset.n_adv is not None else defaults["n_adv"])
    if (cfg.n_adv is not None or attack_kind != "none") and n_adv != ALL and (
            isinstance(n_adv, bool) or not isinstance(n_adv, int) or n_adv < 1):
        raise UserError(f"n_adv (--n-adv) must be an integer >= 1, got {n_adv!r}")
    if cfg.limit is not None and n_adv != ALL:
        n_adv = min(n_adv, cfg.limit)
    if cfg.seed is not None and (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0):
        raise UserError(f"seed (--seed) must be an integer >= 0, got {cfg.seed!r}")
    given = {"attack": attack if cfg.attack else None,
             "eps": eps_list if given_eps else None, "n_adv": cfg.n_adv, "seed": cfg.seed,
             "norm": norm if norm != "Linf" else None,
             "templates": "file" if cfg.templates_file else None, "classnames": "file" if cfg.classnames_file else None}
    preset_values = {"attack": canonical_attack(preset.attack or defaults["attack"]),
                     "eps": tuple(format_eps(e) for e in preset_eps), "n_adv": preset.n_adv if preset.n_adv
                     is not None else defaults["n_adv"], "seed": preset.seed}
    protocol = resolve_protocol(preset.name, given, preset_values)
    seed = cfg.seed if cfg.seed is not None else preset.seed
    plan = EvalPlan(suite, checkpoint, attack, attack_kind, eps_list[0], norm, n_adv, eps_list=eps_list,
                    protocol=protocol, seed=seed, n_adv_given=cfg.n_adv is not None)
    if suite is not None:
        plan.templates, plan.classnames = prompt_config(cfg, suite)
        selected_datasets(suite, cfg)
        adversarial_names(suite, cfg)
    ensure_writable_dir(cfg.out, "--out")
    return plan


def _is_eps(text: str) -> bool:
    from grace_bench.attacks.threat import parse_eps

    parse_eps(text)  # a bad value fails here with the one-line eps message
    return True


def adversarial_names(suite: Suite, cfg: EvalConfig) -> list[str]:
    """The datasets to attack: ``cfg.adv_datasets`` (each in the suite and selected), else the protocol's for the
    suite, else the selected ID ones and those marked ``attacked``."""
    selected = [d.name for d in selected_datasets(suite, cfg)]
    if not cfg.adv_datasets:
        chosen = get_protocol(cfg.protocol or DEFAULT_PROTOCOL).attacked.get(suite.name)
        if chosen == ALL:
            return selected
        if chosen:
            return [n for n in selected if n in chosen]
        return [d.name for d in suite.datasets if (d.role == "id" or d.attacked) and d.name in selected]
    for name in cfg.adv_datasets:
        suite.dataset(name)
        if name not in selected:
            raise UserError(f"adv_datasets (--adv-datasets) names '{name}' but datasets (--datasets) leaves it out; "
                            "add it to --datasets")
    return list(dict.fromkeys(cfg.adv_datasets))


def adv_indices_for(suite: Suite, spec: DatasetSpec, dataset, n_adv: int) -> list[int] | None:
    """The attacked subset; ``n_adv`` larger than the dataset fails here, before the clean pass."""
    indices = suite.adv_indices(dataset, n_adv) if suite.adv_indices is not None else None
    available = len(indices) if indices is not None else len(dataset)
    if n_adv > available:
        raise UserError(f"n_adv (--n-adv) {n_adv} exceeds the {available} examples of '{spec.name}'; "
                        f"use --n-adv {available} or less")
    return indices


def adv_subset(plan: EvalPlan, suite: Suite, spec: DatasetSpec, dataset, limit: int | None) -> tuple[
        list[int] | None, int]:
    """(indices or None, n) attacked on ``spec`` under ``plan``'s protocol.

    An explicit ``n_adv`` must fit (as without presets); a preset's count is capped at the dataset's size
    (``"all"``: every image), as the papers' code slices its loader. The suite's fixed ids (RobustBench's
    ImageNet subset) are used for grace-family runs as before, and for a preset's ID dataset when it keeps them.
    """
    protocol = plan.protocol
    family_grace = protocol is None or protocol.based_on == DEFAULT_PROTOCOL
    if family_grace:
        return adv_indices_for(suite, spec, dataset, int(plan.n_adv)), int(plan.n_adv)
    preset = protocol.preset
    wanted = plan.n_adv if plan.n_adv_given else preset.n_adv_for.get(spec.name, plan.n_adv)
    use_ids = preset.subset_ids and suite.adv_indices is not None and spec.role == "id" and wanted != ALL
    indices = suite.adv_indices(dataset, None) if use_ids else None
    available = len(indices) if indices is not None else len(dataset)
    if plan.n_adv_given and wanted > available:
        raise UserError(f"n_adv (--n-adv) {wanted} exceeds the {available} examples of '{spec.name}'; "
                        f"use --n-adv {available} or less")
    n = available if wanted == ALL else min(int(wanted), available)
    if limit is not None:
        n = min(n, limit)
    if n < 1:
        raise UserError(f"dataset '{spec.name}' has no image to attack; check its data")
    return (indices[:n] if indices is not None else None), n


def selected_datasets(suite: Suite, cfg: EvalConfig) -> list[DatasetSpec]:
    """``cfg.datasets``, else the protocol's datasets for the suite (those the suite holds), else all."""
    if cfg.datasets:
        return [suite.dataset(name) for name in cfg.datasets]
    names = get_protocol(cfg.protocol or DEFAULT_PROTOCOL).datasets.get(suite.name)
    if names:
        return [d for d in suite.datasets if d.name in names]
    return list(suite.datasets)
