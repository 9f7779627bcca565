"""The summary of one checkpoint: every finished result in ``OUT/results/<fp12>/``, merged, never dropped.

``results`` lists each finished result (clean or adversarial, any protocol) under its file stem
``<dataset>-<kind>-<config hash>``. The headline fields the leaderboard and figures read (``per_dataset``,
``adversarial``, ``aggregates``, ``protocol``) use this run's results, and for every dataset this run did not
compute (e.g. ``--attack none`` after an APGD run) the newest finished result of the same suite and prompts.
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


def _matches(rec: Mapping[str, Any], kind: str, dataset: str, suite: str, prompt_key: Mapping[str, str]) -> bool:
    cfg = rec.get("config") or {}
    return (rec.get("kind") == kind and rec["dataset"].get("name") == dataset and rec["dataset"].get("suite") == suite
            and cfg.get("protocol") == PROTOCOL_VERSION and cfg.get("templates") == prompt_key["templates"]
            and cfg.get("classnames") == prompt_key["classnames"])


def pick(finished: Finished, current: Mapping[tuple[str, str], Path], kind: str, dataset: str, suite: str,
         prompt_key: Mapping[str, str], prefer: Mapping[str, Any] | None = None) -> tuple[Path, dict] | None:
    """This run's result for (kind, dataset), else the newest matching finished one (``prefer``red config first)."""
    if (kind, dataset) in current:
        mine = next(((p, r) for p, r in finished if p == current[kind, dataset]), None)
        if mine is not None:
            return mine
    found = [(p, r) for p, r in finished if _matches(r, kind, dataset, suite, prompt_key)]
    if not found:
        return None

    def score(item: tuple[Path, dict]) -> tuple:
        cfg = item[1].get("config") or {}
        same = sum(cfg.get(k) == v for k, v in (prefer or {}).items())
        return same, str(item[1].get("created") or ""), item[0].name

    return max(found, key=score)


def build_summary(store: ResultStore, *, fingerprint: str, suite: Any, identity: Identity, specs_seen: list[str],
                  current: Mapping[tuple[str, str], Path], prompt_key: Mapping[str, str], n_templates: int,
                  requested: Mapping[str, Any]) -> dict[str, Any]:
    """The merged summary of ``fingerprint``; ``requested`` holds this run's attack, eps, norm, n_adv, etc."""
    finished = store.finished(fingerprint)
    per_dataset: dict[str, dict] = {}
    adversarial: dict[str, dict] = {}
    prefer_clean = {"precision": requested["precision"], "limit": requested["limit"]}
    for spec in suite.datasets:
        hit = pick(finished, current, "clean", spec.name, suite.name, prompt_key, prefer_clean)
        if hit is not None:
            per_dataset[spec.name] = clean_view(*hit)
        hit = pick(finished, current, "adversarial", spec.name, suite.name, prompt_key)
        if hit is not None:
            adversarial[spec.name] = adversarial_view(*hit)
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
        },
        "results": results_index(finished),
        "versions": package_versions(),
    }
