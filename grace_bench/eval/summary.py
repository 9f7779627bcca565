"""The summary of one checkpoint: every finished result in ``OUT/results/<fp12>/``, merged, never dropped.

``results`` lists each finished result (clean or adversarial, any protocol) under its file stem
``<dataset>-<kind>-<config hash>``. The headline fields the leaderboard and figures read (``per_dataset``,
``adversarial``, ``aggregates``, ``protocol``) use this run's results, and for every dataset this run did not
compute (e.g. ``--attack none`` after an APGD run) the newest finished result of the same suite and prompts.
Results of different protocols never mix: a result counts only for a summary of its own protocol family (the
``preset`` tag hashed into its config; none for grace), and each family has its own summary file. Runs with
several ε add ``adversarial_by_eps``; zero-shot protocols and zero-shot suites (under any protocol) add
``zero_shot`` (clean / robust per dataset and their averages, with and without ImageNet).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grace_bench.eval.labels import Identity
from grace_bench.eval.metrics import AGGREGATE_DEFINITIONS, aggregates
from grace_bench.eval.store import SUMMARY_SCHEMA, ResultStore, package_versions

PROTOCOL_VERSION = "grace-bench/eval/v1"
ADV_KEEP = ("attack", "attack_label", "eps", "eps_value", "norm", "n", "clean_acc", "robust_acc", "cascade", "config",
            "timings", "warnings")

Finished = list[tuple[Path, dict[str, Any]]]


def clean_view(path: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """A clean result as the summary's ``per_dataset`` entry."""
    m = record["metrics"]
    empty = (m.get("data_report") or {}).get("n_empty_folders")
    return {"role": record["dataset"]["role"], "n": m["n"], "top1": m["top1"],
            **({"top5": m["top5"]} if "top5" in m else {}), **({"n_empty_classes": empty} if empty else {}),
            "result_file": str(path)}


def adversarial_view(path: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """An adversarial result as the summary's ``adversarial`` entry (no per-example flags)."""
    m = record["metrics"]
    return {**{k: m[k] for k in ADV_KEEP if k in m}, "result_file": str(path)}


def results_index(finished: Finished) -> dict[str, dict[str, Any]]:
    """Every finished result, keyed by its file stem, with the protocol config that identifies it."""
    index = {}
    for path, rec in finished:
        view = clean_view(path, rec) if rec["kind"] == "clean" else adversarial_view(path, rec)
        view = {k: v for k, v in view.items() if k not in ("cascade", "timings", "warnings")}
        index[path.stem] = {"kind": rec["kind"], "dataset": rec["dataset"].get("name"),
                            "suite": rec["dataset"].get("suite"), "config_hash": rec.get("config_hash"),
                            "protocol": rec.get("config", {}), "created": rec.get("created"), **view}
    return index


def read_existing(path: Path) -> dict[str, Any] | None:
    """The summary already at ``path`` (for its label), or None if absent or not a summary."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SUMMARY_SCHEMA else None


def _matches(rec: Mapping[str, Any], kind: str, dataset: str, suite: str, prompt_key: Mapping[str, str] | None,
             tags: frozenset = frozenset({None}), eps: str | None = None) -> bool:
    """Whether ``rec`` is a result of (kind, dataset, suite, prompts, protocol tags[, eps]); ``prompt_key`` None:
    any prompts (a zero-shot dataset whose folder is not under this run's data root)."""
    cfg = rec.get("config") or {}
    same_prompts = prompt_key is None or (cfg.get("templates") == prompt_key["templates"]
                                          and cfg.get("classnames") == prompt_key["classnames"])
    return (rec.get("kind") == kind and rec["dataset"].get("name") == dataset and rec["dataset"].get("suite") == suite
            and cfg.get("protocol") == PROTOCOL_VERSION and same_prompts and cfg.get("preset") in tags
            and (eps is None or cfg.get("eps") == eps))


def pick(finished: Finished, current: Mapping[tuple, Path], kind: str, dataset: str, suite: str,
         prompt_key: Mapping[str, str] | None, prefer: Mapping[str, Any] | None = None, *,
         tags: frozenset = frozenset({None}), eps: str | None = None) -> tuple[Path, dict] | None:
    """This run's result for (kind, dataset[, eps]), else the newest matching finished one of the same protocol
    (a preset ``tags`` names; ``None``: grace), ``prefer``red config first."""
    key = (kind, dataset) if eps is None else (kind, dataset, eps)
    if key in current:
        mine = next(((p, r) for p, r in finished if p == current[key]), None)
        if mine is not None:
            return mine
    found = [(p, r) for p, r in finished if _matches(r, kind, dataset, suite, prompt_key, tags, eps)]
    if not found:
        return None

    def score(item: tuple[Path, dict]) -> tuple:
        cfg = item[1].get("config") or {}
        same = sum(cfg.get(k) == v for k, v in (prefer or {}).items())
        return same, str(item[1].get("created") or ""), item[0].name

    return max(found, key=score)


def build_summary(store: ResultStore, *, fingerprint: str, suite: Any, identity: Identity, specs_seen: list[str],
                  current: Mapping[tuple, Path], prompt_key: Mapping[str, str], n_templates: int,
                  requested: Mapping[str, Any], protocol: Mapping[str, Any] | None = None,
                  prompt_keys: Mapping[str, Mapping[str, str] | None] | None = None) -> dict[str, Any]:
    """The merged summary of ``fingerprint``; ``requested`` holds this run's attack, eps, norm, n_adv, etc.

    ``protocol`` is the run's protocol record (``ResolvedProtocol.record``), ``prompt_keys`` the prompt hashes of
    datasets with their own prompts (default: ``prompt_key`` for every dataset; None: unknown, any prompts).
    """
    protocol = dict(protocol or {})
    tag = _tag(protocol)
    # a custom run's results identical to its preset's carry the preset's tag (ResolvedProtocol.for_result)
    base = protocol.get("based_on")
    tags = frozenset({tag, None if base in (None, "grace") else base})
    eps_list = list((protocol.get("settings") or {}).get("eps") or [requested["eps"]])
    finished = store.finished(fingerprint)
    # presets, ε lists and zero-shot suites (every dataset zero-shot, e.g. grace on ``zeroshot``) keep results per ε
    per_eps = len(eps_list) > 1 or tag is not None or is_zero_shot_suite(suite)
    per_dataset: dict[str, dict] = {}
    adversarial: dict[str, dict] = {}
    by_eps: dict[str, dict[str, dict]] = {eps: {} for eps in eps_list}
    prefer_clean = {"precision": requested["precision"], "limit": requested["limit"]}
    for spec in suite.datasets:
        key = (prompt_keys or {}).get(spec.name, prompt_key)  # None: not known in this run, any prompts
        hit = pick(finished, current, "clean", spec.name, suite.name, key, prefer_clean, tags=tags)
        if hit is not None:
            per_dataset[spec.name] = clean_view(*hit)
        hit = pick(finished, current, "adversarial", spec.name, suite.name, key, tags=tags)
        if hit is not None:
            adversarial[spec.name] = adversarial_view(*hit)
        if per_eps:
            for eps in eps_list:
                hit = pick(finished, current, "adversarial", spec.name, suite.name, key, tags=tags, eps=eps)
                if hit is not None:
                    by_eps[eps][spec.name] = adversarial_view(*hit)
    id_names = [d.name for d in suite.by_role("id")]
    id_name = id_names[0] if id_names else ""
    shown = adversarial.get(id_name) or next(iter(adversarial.values()), None)
    threat = {k: requested[k] for k in ("attack", "eps", "norm", "n_adv", "seed")}
    if shown:  # the protocol describes the robust accuracy the summary shows, whichever run computed it
        threat = {"attack": shown["attack"], "eps": shown["eps"], "norm": shown["norm"], "n_adv": shown["n"],
                  "seed": (shown.get("config") or {}).get("seed", requested["seed"])}
        if (shown.get("config") or {}).get("chunk_size"):
            threat["attack_chunk"] = shown["config"]["chunk_size"]
    checkpoint = {**identity.checkpoint, "fingerprint": fingerprint, "evaluated_as": specs_seen}
    if identity.wise_alpha is not None:
        checkpoint["wise_alpha"] = identity.wise_alpha
    extra: dict[str, Any] = {}
    if per_eps:
        extra["adversarial_by_eps"] = by_eps
    if protocol.get("zero_shot") or tag is not None or is_zero_shot_suite(suite):
        extra["zero_shot"] = zero_shot_aggregates(per_dataset, by_eps, _dataset_order(suite, protocol))
    preset_fields = {}
    if protocol:
        preset_fields = {"preset": protocol.get("name"), "based_on": protocol.get("based_on"),
                         "family": _family(protocol), "preset_settings": protocol.get("settings"),
                         "preset_overrides": protocol.get("overrides"), "eps_list": eps_list}
    return {
        "schema": SUMMARY_SCHEMA,
        "checkpoint": checkpoint,
        "suite": suite.name,
        "label": identity.label,
        "label_source": identity.source,
        "per_dataset": per_dataset,
        "adversarial": adversarial,
        "aggregates": aggregates(per_dataset, adversarial, id_name),
        "protocol": {
            "version": PROTOCOL_VERSION,
            "templates": n_templates,
            "templates_hash": prompt_key["templates"],
            "classnames_hash": prompt_key["classnames"],
            **threat,
            "precision_clean": requested["precision"],
            "precision_attack": "fp32",
            "limit": requested["limit"],
            "definitions": AGGREGATE_DEFINITIONS,
            **preset_fields,
        },
        **extra,
        "results": results_index(finished),
        "versions": package_versions(),
    }


def _tag(protocol: Mapping[str, Any]) -> str | None:
    """The preset tag hashed into result configs (None: grace and custom runs started from grace)."""
    name, base = protocol.get("name"), protocol.get("based_on")
    if not name or base in (None, "grace"):
        return None
    return name if name != "custom" else f"custom:{base}"


def _family(protocol: Mapping[str, Any]) -> str:
    tag = _tag(protocol)
    return "grace" if tag is None else tag.replace(":", "-")


def is_zero_shot_suite(suite: Any) -> bool:
    """Whether every dataset of ``suite`` is a zero-shot one (its summary gets the papers' zero-shot table)."""
    return bool(suite.datasets) and all(d.role == "zero-shot" for d in suite.datasets)


def is_imagenet(name: str) -> bool:
    """ImageNet itself (the papers average the zero-shot datasets without it)."""
    return name.lower().replace("-", "").replace("_", "") in ("imagenet", "imagenet1k")


def _dataset_order(suite: Any, protocol: Mapping[str, Any]) -> list[str]:
    """The preset's dataset order on this suite (the paper's table order), else the suite's."""
    from grace_bench.eval.protocols import PROTOCOLS

    base = protocol.get("based_on")
    listed = list(PROTOCOLS.get(base).datasets.get(suite.name, ())) if base in PROTOCOLS else []
    return listed + [d.name for d in suite.datasets if d.name not in listed]


def zero_shot_aggregates(per_dataset: Mapping[str, Mapping[str, Any]],
                         by_eps: Mapping[str, Mapping[str, Mapping[str, Any]]],
                         order: list[str] | None = None) -> dict[str, Any]:
    """Per ε: clean and robust accuracy per attacked dataset, their averages and the averages without ImageNet
    (``order``: the column order of the tables, kept in the block as ``order``)."""
    out: dict[str, Any] = {}
    for eps, entries in by_eps.items():
        rows = {name: {"clean": (per_dataset.get(name) or {}).get("top1"), "robust": e.get("robust_acc"),
                       "n_adv": e.get("n")} for name, e in entries.items()}
        ranked = [n for n in (order or []) if n in rows] + sorted(n for n in rows if n not in (order or []))
        out[eps] = {"datasets": rows, "order": ranked, **_averages(rows, "")}
        out[eps].update(_averages({k: v for k, v in rows.items() if not is_imagenet(k)}, "_without_imagenet"))
    return out


def _averages(rows: Mapping[str, Mapping[str, Any]], suffix: str) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows.values() if r.get(key) is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(rows) else None

    return {f"clean_avg{suffix}": mean("clean"), f"robust_avg{suffix}": mean("robust"),
            f"n_datasets{suffix}": len(rows)}
