"""Console table of an evaluation summary."""

from __future__ import annotations

from typing import Any


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:6.2f}"


def format_summary(summary: dict[str, Any]) -> str:
    """A fixed-width table: one row per dataset, the robust accuracy, then the aggregates."""
    proto = summary["protocol"]
    lines = [
        f"grace-bench eval · {summary['label']} · suite {summary['suite']} · "
        f"fingerprint {summary['checkpoint']['fingerprint'][:12]}",
        f"{'dataset':<22}{'role':<9}{'n':>7}{'top-1 %':>9}{'top-5 %':>9}",
    ]
    for name, r in summary["per_dataset"].items():
        lines.append(f"{name:<22}{r['role']:<9}{r['n']:>7}{_pct(r['top1']):>9}{_pct(r.get('top5')):>9}")
    by_eps = summary.get("adversarial_by_eps") or {"": summary["adversarial"]}
    for entries in by_eps.values():
        for name, r in entries.items():
            if not r:
                continue
            lines.append(
                f"{name + ' robust':<22}{'adv':<9}{r['n']:>7}{_pct(r['robust_acc']):>9}"
                f"   {r['attack']}, eps {r['eps']} {r['norm']} (clean on this subset {_pct(r['clean_acc']).strip()})"
            )
    a = summary["aggregates"]
    templates = f"{proto['templates']} templates" if proto["templates"] else "per-dataset templates"  # zero-shot suites
    lines.append(
        f"ID {_pct(a['id']).strip()} · OOD avg {_pct(a['ood_avg']).strip()} · Nat-adv {_pct(a['nat_adv']).strip()}"
        f" · {proto['attack']} {_pct(a['autoattack']).strip()} · Adv {_pct(a['adv']).strip()}"
        f" · HM {_pct(a['hm']).strip()}   (%, {templates}, eps {proto['eps']}, n_adv "
        f"{proto['n_adv']})"
    )
    for eps, z in (summary.get("zero_shot") or {}).items():
        lines.append(f"zero-shot average at eps {eps}: clean {_pct(z.get('clean_avg')).strip()} · robust "
                     f"{_pct(z.get('robust_avg')).strip()} over {z.get('n_datasets')} datasets; without ImageNet: "
                     f"clean {_pct(z.get('clean_avg_without_imagenet')).strip()} · robust "
                     f"{_pct(z.get('robust_avg_without_imagenet')).strip()}")
    if proto.get("preset") not in (None, "grace"):  # the default protocol's table stays as it always was
        based = f" (from preset {proto['based_on']}: {', '.join(proto.get('preset_overrides') or [])} given)" \
            if proto["preset"] == "custom" else ""
        lines.append(f"protocol: {proto['preset']}{based}")
    return "\n".join(lines)


def print_summary(summary: dict[str, Any]) -> None:
    print(format_summary(summary))
