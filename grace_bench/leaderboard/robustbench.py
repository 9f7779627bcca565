"""Exports at the edge of the toolkit: RobustBench model-card JSON and CLIP_benchmark-style JSON.

RobustBench cards follow its ``model_info/<dataset>/<threat model>/<Name>.json`` files: accuracies as
percent strings with 2 decimals, ``eps`` as a fraction string ("4/255"), and the ``ModelInfo`` fields.
CLIP_benchmark records follow its ``--output`` JSON: ``{"dataset", "model", "pretrained", "task",
"metrics": {"acc1", "acc5", "mean_per_class_recall"}, "language"}`` with fractions (``null`` where a
metric was not measured, e.g. acc5 with fewer than 5 classes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from grace_bench.attacks.threat import describe_eps as format_eps
from grace_bench.errors import UserError
from grace_bench.results.records import SummaryRecord
from grace_bench.results.values import as_float
from grace_bench.utils.atomic import atomic_write_json
from grace_bench.utils.paths import path_inside, slug


class LeaderboardRow(Protocol):
    """What the exports read of a leaderboard row (``leaderboard.build.Row``)."""

    summary: SummaryRecord
    label: str

MODEL_INFO_FIELDS = (
    "link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture",
    "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable",
)
# Attacks whose robust accuracy RobustBench would accept as its "autoattack_acc" (full AutoAttack versions).
AUTOATTACK_VERSIONS = {"aa-standard", "aa-plus", "aa-rand", "standard", "plus", "rand", "autoattack"}
THREAT_MODELS = {"linf": "Linf", "l_inf": "Linf", "inf": "Linf", "l2": "L2"}


def percent_string(value: Any) -> str:
    """A fraction as RobustBench's percent string (``0.6838`` -> ``"68.38"``); ``""`` when missing."""
    v = as_float(value)
    return "" if v is None else f"{100 * v:.2f}"


def _id_dataset(summary: SummaryRecord) -> str | None:
    adv = summary.data.get("adversarial") or {}
    ids = [ds for ds, e in summary.per_dataset.items() if isinstance(e, Mapping) and e.get("role") == "id"]
    for ds in ids:
        if ds in adv:
            return ds
    return next(iter(adv), None)


def robustbench_card(summary: SummaryRecord, *, name: str | None = None,
                     meta: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """A RobustBench model card for the ID adversarial result of ``summary`` (None without one).

    Robust accuracy from an attack that is not a full AutoAttack version is still written to
    ``autoattack_acc`` but flagged ``unreliable`` and explained in the footnote (it is an upper bound).
    """
    ds = _id_dataset(summary)
    if ds is None:
        return None
    entry = (summary.data.get("adversarial") or {})[ds]
    proto = summary.protocol
    attack = str(entry.get("attack") or proto.get("attack") or "")
    norm = str(entry.get("norm") or proto.get("norm") or "Linf")
    eps = format_eps(entry.get("eps", proto.get("eps")))
    n = entry.get("n") or proto.get("n_adv")
    clean = entry.get("clean_acc")
    notes = []
    if clean is None:
        clean = (summary.per_dataset.get(ds) or {}).get("top1")
        notes.append("clean accuracy on the full test set, not on the attacked subset")
    full_aa = attack.lower() in AUTOATTACK_VERSIONS
    if not full_aa:
        notes.append(f"robust accuracy from '{attack or 'unrecorded attack'}', not a full AutoAttack run: an upper "
                     "bound on AutoAttack robust accuracy")
    suite = str(summary.data.get("suite") or "")
    templates = proto.get("templates")
    if isinstance(templates, (list, tuple)):
        templates = len(templates)
    foot = f"Zero-shot CLIP head ({templates} templates); " if templates else "Zero-shot CLIP head; "
    foot += f"{attack or 'attack'} {norm} eps={eps} on {n if n else 'all'} {ds} images; evaluated with grace-bench."
    card: dict[str, Any] = {
        "link": "",
        "name": name or summary.label,
        "authors": "",
        "additional_data": True,  # CLIP is pretrained on image-text data beyond the benchmark's training set
        "number_forward_passes": 1,
        "dataset": suite,
        "venue": "",
        "architecture": str((summary.data.get("checkpoint") or {}).get("arch") or ""),
        "eps": eps or "",
        "clean_acc": percent_string(clean),
        "reported": "",
        "autoattack_acc": percent_string(entry.get("robust_acc")),
        "footnote": " ".join([foot, *[note[0].upper() + note[1:] + "." for note in notes]]),
        "unreliable": not full_aa,
    }
    if meta:
        unknown = sorted(set(meta) - set(MODEL_INFO_FIELDS))
        if unknown:
            raise UserError(
                f"unknown RobustBench card field(s) {', '.join(unknown)}; use: {', '.join(MODEL_INFO_FIELDS)}"
            )
        card.update(meta)
    return card


def threat_model_dir(summary: SummaryRecord) -> str:
    ds = _id_dataset(summary)
    entry = (summary.data.get("adversarial") or {}).get(ds) or {}
    norm = str(entry.get("norm") or summary.protocol.get("norm") or "Linf")
    return THREAT_MODELS.get(norm.lower(), norm)


def split_spec(spec: str, arch: str | None) -> tuple[str, str]:
    """CLIP_benchmark's (model, pretrained) from a checkpoint spec: ``ViT-B-32:openai`` -> (ViT-B-32, openai)."""
    if ":" in spec and not spec.startswith(("local-dir:", "hf-hub:")):
        model, pretrained = spec.split(":", 1)
        return arch or model, pretrained
    return arch or spec, spec


def clip_benchmark_records(summary: SummaryRecord, language: str = "en") -> list[dict[str, Any]]:
    """One CLIP_benchmark zero-shot classification record per evaluated dataset of ``summary``."""
    ckpt = summary.data.get("checkpoint") or {}
    model, pretrained = split_spec(str(ckpt.get("spec") or summary.label), ckpt.get("arch"))
    records = []
    for ds, entry in summary.per_dataset.items():
        entry = entry if isinstance(entry, Mapping) else {"top1": entry}
        records.append({
            "dataset": ds,
            "model": model,
            "pretrained": pretrained,
            "task": "zeroshot_classification",
            "metrics": {
                "acc1": as_float(entry.get("top1")),
                "acc5": as_float(entry.get("top5")),
                "mean_per_class_recall": as_float(entry.get("mean_per_class_recall")),
            },
            "language": language,
        })
    return records


def write_exports(rows: Sequence[LeaderboardRow], out_dir: Path,
                  card_meta: Mapping[str, Mapping[str, Any]] | None = None) -> list[Path]:
    """Write ``robustbench/<dataset>/<threat>/<model>.json`` and ``clip_benchmark/<model>/<dataset>.json``.

    Every name taken from a summary (suite, norm, label, dataset) is slugged and every path checked to stay
    inside ``out_dir``: a crafted summary cannot write elsewhere.
    """
    card_meta = card_meta or {}
    written = []
    for row in rows:
        meta = {**card_meta.get("*", {}), **card_meta.get(row.label, {})}
        card = robustbench_card(row.summary, name=row.label, meta=meta)
        if card is not None:
            path = path_inside(out_dir, "robustbench", slug(card["dataset"] or "unknown"),
                               slug(threat_model_dir(row.summary)), f"{slug(row.label)}.json")
            atomic_write_json(path, {k: card[k] for k in MODEL_INFO_FIELDS})
            written.append(path)
        language = str(row.summary.protocol.get("language") or "en")
        for rec in clip_benchmark_records(row.summary, language=language):
            path = path_inside(out_dir, "clip_benchmark", slug(row.label), f"{slug(rec['dataset'])}.json")
            atomic_write_json(path, rec)
            written.append(path)
    _remove_stale(out_dir, written)
    return written


def _remove_stale(out_dir: Path, written: Sequence[Path]) -> None:
    """Delete export JSON left from an earlier build (a model no longer in the results), so the directory
    always matches the table. Only ``robustbench/`` and ``clip_benchmark/`` under ``out_dir`` are touched."""
    keep = {p.resolve() for p in written}
    for sub in ("robustbench", "clip_benchmark"):
        root = out_dir / sub
        if root.is_symlink() or not root.is_dir():
            continue
        path_inside(out_dir, sub)  # never walk a folder that resolves outside out_dir
        for path in sorted(root.rglob("*.json")):
            if path.resolve() not in keep and not path.is_symlink():
                path.unlink()
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
