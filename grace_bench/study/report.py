"""The study's report: per-method tables (mean ± std over seeds), the claim-by-claim reading, the
leaderboard and every figure, written into ``OUT`` (``study.md``, ``study.json``, ``leaderboard/``,
``figures/``). Every number comes from the result files of this study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grace_bench.errors import UserError
from grace_bench.results.metrics import Metric, get_metric, metrics
from grace_bench.results.records import SummaryRecord, geometry_by_fingerprint, load_geometry, load_summaries
from grace_bench.results.writer import write_record
from grace_bench.study.claims import PAPER_TABLE6, accuracy_claims, claims_markdown, geometry_claims
from grace_bench.study.recipe import WISE, ZERO_SHOT
from grace_bench.study.state import StudyRun, total_times
from grace_bench.utils.atomic import atomic_write_text
from grace_bench.utils.runtime_info import runtime_info


def aggregate_metrics() -> list[Metric]:
    """The study's accuracy columns: every aggregate of the metrics table."""
    return metrics("aggregate")


def geometry_metrics() -> list[Metric]:
    """The study's geometry columns: every geometry metric of the table (standard errors aside)."""
    return metrics("geometry", errors=False)


FIGURE_KINDS = ("spectrum", "curvature", "cka", "landscape")


def entry_records(run: StudyRun) -> tuple[list[dict[str, Any]], list[SummaryRecord]]:
    """One record per evaluated checkpoint (label, seed, fingerprint, aggregates, per-dataset top-1), and the
    summaries they were read from."""
    by_spec = {}
    for s in load_summaries([run.results_dir]) if run.results_dir.is_dir() else []:
        by_spec[(str((s.data.get("checkpoint") or {}).get("spec")), s.label)] = s
    records, summaries = [], []
    for e in run.entries():
        s = by_spec.get((e.checkpoint, e.label))
        if s is None:
            raise UserError(f"no evaluation of {e.checkpoint} ({e.label}) in {run.results_dir}; "
                            "rerun `grace-bench compare` to finish the eval stage")
        summaries.append(s)
        records.append({
            "label": e.label, "group": e.spec.group, "seed": e.seed, "alpha": e.alpha, "checkpoint": e.checkpoint,
            "fingerprint": s.fp12, "summary": str(s.path),
            "aggregates": {m.key: m.read(s) for m in aggregate_metrics()},
            "per_dataset": {name: s.top1(name) for name in s.per_dataset},
            "protocol": {k: s.protocol.get(k) for k in ("attack", "eps", "norm", "n_adv", "templates", "limit")},
        })
    return records, summaries


def method_stats(records: list[dict[str, Any]], summaries: list[SummaryRecord]) -> dict[str, dict[str, Any]]:
    """Per label: n, seeds, mean and sample std (over seeds) of every aggregate and dataset top-1
    (pooled by ``leaderboard.by_method``, which refuses to pool different protocols)."""
    from grace_bench.leaderboard.by_method import method_table

    labels = list(dict.fromkeys(r["label"] for r in records))
    stats: dict[str, dict[str, Any]] = {}
    for row in method_table(summaries, order=labels):
        mine = [r for r in records if r["label"] == row.label]
        columns = {m.key: row.aggregates.get(m.key) for m in aggregate_metrics()}
        columns.update({f"top1/{name}": stat for name, stat in row.per_dataset.items()})
        stats[row.label] = {
            "group": mine[0]["group"], "n": row.n, "seeds": [r["seed"] for r in mine],
            "mean": {k: None if st is None else st.mean for k, st in columns.items()},
            "std": {k: None if st is None else st.std for k, st in columns.items()},
            "hm_of_means": row.hm_of_means,
        }
    return stats


def single_seed_stats(record: dict[str, Any]) -> dict[str, Any]:
    """A one-checkpoint row in the shape of ``method_stats`` (no std)."""
    mean = dict(record["aggregates"]) | {f"top1/{k}": v for k, v in record["per_dataset"].items()}
    return {"group": "ablation", "n": 1, "seeds": [record["seed"]], "mean": mean, "std": dict.fromkeys(mean)}


def geometry_values(run: StudyRun, records: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per label (first seed): the geometry columns read from this study's geometry files."""
    if not run.geometry_dir.is_dir():
        return {}
    by_fp = geometry_by_fingerprint(load_geometry([run.geometry_dir]))
    out: dict[str, dict[str, float | None]] = {}
    first = run.recipe.seeds[0]
    for r in records:
        if r["seed"] != first or r["fingerprint"] not in by_fp or r["label"] in out:
            continue
        kinds = by_fp[r["fingerprint"]]
        out[r["label"]] = {m.key: m.read_kinds(kinds) for m in geometry_metrics()}
    return out


def _cell(row: dict[str, Any], key: str) -> str:
    mean, std = row["mean"].get(key), row["std"].get(key)
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"


def markdown_table(stats: dict[str, dict[str, Any]], groups: tuple[str, ...], datasets: list[str]) -> str:
    """Markdown: one row per label of ``groups``, accuracies in % as mean ± std over seeds, sorted by HM."""
    aggs = aggregate_metrics()
    head = ["method", "seeds", *[d for d in datasets], *[m.title for m in aggs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(label, row) for label, row in stats.items()
            if row["group"] in groups and not label.startswith(f"{WISE} α")]
    rows.sort(key=lambda lr: -(lr[1]["mean"].get("hm") or -1))
    for label, row in rows:
        cells = [f"**{label}**" if label == "grace" else label, str(row["n"]),
                 *[_cell(row, f"top1/{d}") for d in datasets], *[_cell(row, m.key) for m in aggs]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geometry_table(geo: dict[str, dict[str, float | None]]) -> str:
    """Markdown: the geometry columns per label (first seed)."""
    cols = geometry_metrics()
    head = ["method", *[m.title for m in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in geo.items():
        cells = [label] + ["—" if row.get(m.key) is None else f"{row[m.key]:.4g}" for m in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_table(stats: dict[str, dict[str, Any]]) -> str:
    """Markdown: the paper's ImageNet Table 6 beside our micro means."""
    keys = [(k, get_metric(k).title) for k in ("id", "ood_avg", "adv", "hm")]
    head = ["method"] + [f"{t} paper" for _, t in keys] + [f"{t} micro" for _, t in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, paper in PAPER_TABLE6.items():
        ours = stats.get(label)
        cells = [label] + [f"{paper[k]:.2f}" for k, _ in keys]
        cells += [_cell(ours, k) if ours else "—" for k, _ in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_figures(run: StudyRun, stats: dict[str, dict[str, Any]], records: list[dict[str, Any]]) -> list[Path]:
    """Every figure of the study as PNG under ``OUT/figures``; returns the files written."""
    from grace_bench.plots.api import draw
    from grace_bench.plots.tradeoff import plot_tradeoff
    from grace_bench.plots.training import plot_training_curves, read_log_jsonl
    from grace_bench.plots.wise_curve import plot_wise_curve

    fig_dir = run.out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    protocol = records[0]["protocol"] if records else None
    written: list[Path] = []
    points = {label: {"id": row["mean"]["id"], "ood": row["mean"]["ood_avg"], "adv": row["mean"]["adv"]}
              for label, row in stats.items()
              if row["group"] in ("main", "recent", "lora") and not label.startswith(f"{WISE} α")
              and None not in (row["mean"]["id"], row["mean"]["ood_avg"], row["mean"]["adv"])}
    if points:
        plot_tradeoff(points, protocol=protocol, title="ID / OOD / Adv trade-off (mean over seeds)",
                      out=fig_dir / "tradeoff", formats=("png",))
        written.append(fig_dir / "tradeoff.png")
    first = run.recipe.seeds[0]
    zero_shot = [r for r in records if r["label"] == ZERO_SHOT]
    ft_first = [r for r in records if r["label"] == "ft" and r["seed"] == first]
    wise_first = [r for r in records if r["alpha"] is not None and r["seed"] == first]
    if ft_first and wise_first and zero_shot:
        pts = {0.0: zero_shot[0]["aggregates"], 1.0: ft_first[0]["aggregates"]}
        pts.update({r["alpha"]: r["aggregates"] for r in wise_first})
        alphas = sorted(pts)
        refs = {label: {"id": stats[label]["mean"]["id"], "ood": stats[label]["mean"]["ood_avg"]}
                for label in ("grace", "tecoa") if label in stats}
        plot_wise_curve(alphas, [pts[a]["id"] for a in alphas], [pts[a]["ood_avg"] for a in alphas],
                        adv=[pts[a]["adv"] for a in alphas], references=refs, protocol=protocol,
                        title=f"WiSE-FT interpolation (seed {first})", out=fig_dir / "wise", formats=("png",))
        written.append(fig_dir / "wise.png")
    logs = {r["label"]: read_log_jsonl(Path(r["checkpoint"]) / "log.jsonl") for r in records
            if r["seed"] == first and r["group"] == "main" and (Path(r["checkpoint"]) / "log.jsonl").is_file()}
    if logs:
        plot_training_curves(logs, title=f"Training curves (seed {first})", out=fig_dir / "training",
                             formats=("png",))
        written.append(fig_dir / "training.png")
    if run.geometry_dir.is_dir():
        for kind in FIGURE_KINDS:
            try:
                written += draw(kind, [run.geometry_dir], fig_dir, formats=("png",), log=run.log)
            except UserError as exc:
                run.log(f"  note: no {kind} figure ({exc})")
    return written


def _timing_line(run: StudyRun) -> str:

    totals = total_times(run.work)
    parts = [f"{stage} {sec:.0f} s" for stage, sec in totals.items()]
    return (f"{sum(totals.values()):.0f} s over all invocations of this study, before this report "
            f"({', '.join(parts)}); {sum(run.timings.values()):.0f} s in this invocation")


def write_report(run: StudyRun) -> dict[str, Any]:
    """Build every table, the claims, the leaderboard and the figures; write ``study.md`` and ``study.json``."""
    from grace_bench.leaderboard.build import build_leaderboard

    records, summaries = entry_records(run)
    stats = method_stats(records, summaries)
    geo = geometry_values(run, records)
    claims = accuracy_claims(stats) + geometry_claims(geo)
    board = build_leaderboard([run.results_dir, *([run.geometry_dir] if run.geometry_dir.is_dir() else [])],
                              run.out / "leaderboard", f"{run.recipe.suite} study")
    figures = draw_figures(run, stats, records)
    first_datasets = summaries[0].per_dataset if summaries else {}
    roles = {name: d.get("role") if isinstance(d, dict) else None for name, d in first_datasets.items()}
    datasets = sorted((n for n, r in roles.items() if r != "id"), key=lambda n: (roles[n] != "ood", n))
    recipe = run.recipe
    record = {
        "schema": "grace-bench/study/v1", "suite": recipe.suite, "recipe": recipe.to_dict(),
        "command": run_command(run), "timings_s": dict(run.timings), "entries": records, "methods": stats,
        "geometry": geo, "claims": [c.to_dict() for c in claims],
        "leaderboard": str(board.files[0]), "figures": [str(p) for p in figures],
        "runtime": runtime_info(),  # threads, CPU and GPU model: wall times and float details depend on them
        # write_record adds "created" and "versions" (package versions and the same runtime)
    }
    md = [
        f"# {recipe.suite} study{' (quick)' if recipe.quick else ''}",
        "",
        f"Made by `{run_command(run)}`. Accuracies in %, mean ± sample std over {len(recipe.seeds)} seed(s) "
        f"({', '.join(map(str, recipe.seeds))}); rows marked 1 in *seeds* ran on the first seed only. HM is the "
        "mean of the per-seed HMs (`study.json` also holds the HM of the mean columns, `hm_of_means`).",
        "",
        "Protocol: " + _protocol_line(records) + ".",
        "",
        "Budget (every method): " + _budget_line(recipe) + ".",
        "",
        "## Main comparison (Table 6 style)",
        "",
        markdown_table(stats, ("main", "recent"), datasets),
    ]
    if any(s["group"] == "lora" for s in stats.values()):
        md += ["", "## LoRA variants (Table 7 style)", "", markdown_table(stats, ("lora",), datasets)]
    if any(s["group"] == "ablation" for s in stats.values()):
        first = recipe.seeds[0]
        ablation = {k: v for k, v in stats.items() if v["group"] == "ablation"}
        full = [r for r in records if r["label"] == "grace" and r["seed"] == first]
        if full:  # the ablations ran on the first seed: compare them with full GRACE on that seed
            ablation[f"grace (full, seed {first})"] = single_seed_stats(full[0])
        md += ["", f"## GRACE ablations (Table 8 rows, seed {first})", "",
               markdown_table(ablation, ("ablation",), datasets)]
    if geo:
        md += ["", f"## Geometry (seed {recipe.seeds[0]})", "", geometry_table(geo)]
    md += ["", "## The paper's claims at this scale", "", claims_markdown(claims), "",
           "## Paper (ImageNet, ViT-B/32) beside this study", "", paper_table(stats), "",
           "## Figures", "", *[f"![{p.stem}](figures/{p.name})" for p in figures], "",
           f"Wall time: {_timing_line(run)}.", ""]
    record["markdown"] = "\n".join(md)
    atomic_write_text(run.out / "study.md", record["markdown"])
    return write_record(run.out / "study.json", record, kind="study")


def run_command(run: StudyRun) -> str:
    """The command that reproduces this study (as recorded by the CLI)."""
    return run.command or f"grace-bench compare --suite {run.recipe.suite}"


def _protocol_line(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no results"
    p = records[0]["protocol"]
    limit = f", first {p['limit']} images per dataset" if p.get("limit") else ""
    return (f"zero-shot top-1 with {p.get('templates')} templates{limit}; robust = {p.get('attack')} at "
            f"ε {p.get('eps')} ({p.get('norm')}) on {p.get('n_adv')} ID test images; Adv = mean(robust, Nat-adv); "
            "HM = 3/(1/ID + 1/OOD avg + 1/Adv), averaged over seeds")


def _budget_line(recipe: Any) -> str:
    if recipe.steps is None:
        return "each method's paper setting"
    lrs = ", ".join(f"{k} {v:g}" for k, v in sorted(recipe.lr.items())) or "method defaults"
    return (f"{recipe.steps} steps of batch {recipe.batch_size}, warm-up {recipe.warmup_steps}, AdamW + cosine; "
            f"adversarial training at ε {recipe.train_eps} with PGD-{recipe.train_pgd_steps} (step "
            f"{recipe.train_pgd_step_size}); lr per method chosen on the val split ({recipe.lr_source}): {lrs}")

