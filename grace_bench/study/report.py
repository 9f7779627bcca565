"""The study's report: per-method tables (mean ± std over seeds), paired differences against GRACE with
their 95% intervals (over seeds and over test images, see ``study.stats``), the claim-by-claim reading with
three-valued verdicts (``study.claims``), the leaderboard and every figure, written into ``OUT``
(``study.md``, ``study.json``, ``leaderboard/``, ``figures/``). Every number comes from the result files of
this study; the report stage only reads them (``--stages report`` reruns it on finished results).
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
from grace_bench.study.rows import study_rows
from grace_bench.study.state import StudyRun, total_times
from grace_bench.study.stats import Bootstrap, PairedDiff, Row, paired_diff
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


def geometry_by_seed(run: StudyRun, records: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, float | None]]]:
    """Per label and seed: the geometry columns of every checkpoint this study's geometry files cover."""
    if not run.geometry_dir.is_dir():
        return {}
    by_fp = geometry_by_fingerprint(load_geometry([run.geometry_dir]))
    out: dict[str, dict[int, dict[str, float | None]]] = {}
    for r in records:
        if r["fingerprint"] in by_fp and r["seed"] not in out.get(r["label"], {}):
            kinds = by_fp[r["fingerprint"]]
            out.setdefault(r["label"], {})[r["seed"]] = {m.key: m.read_kinds(kinds) for m in geometry_metrics()}
    return out


def geometry_values(run: StudyRun, records: list[dict[str, Any]],
                    by_seed: dict[str, dict[int, dict[str, float | None]]] | None = None
                    ) -> dict[str, dict[str, float | None]]:
    """Per label (first seed): the geometry columns read from this study's geometry files."""
    by_seed = geometry_by_seed(run, records) if by_seed is None else by_seed
    first = run.recipe.seeds[0]
    return {label: seeds[first] for label, seeds in by_seed.items() if first in seeds}


def _cell(row: dict[str, Any], key: str) -> str:
    mean, std = row["mean"].get(key), row["std"].get(key)
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"


GRACE = "grace"
BESIDE_GRACE = ("grace-default",)  # GRACE at its spec defaults: shown right after the tuned row
RECENT = "recent"  # newer baselines: after the paper's rows


def _by_hm(rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(rows, key=lambda lr: -(lr[1]["mean"].get("hm") or -1))


def main_rows(stats: dict[str, dict[str, Any]], groups: tuple[str, ...]) -> list[tuple[str, dict[str, Any]] | None]:
    """The rows of a table in order: each group of ``groups`` sorted by HM, a ``None`` separator before each
    further group that has rows, and ``BESIDE_GRACE`` right after ``grace`` (in GRACE's table). Absent rows are
    skipped."""
    shown = {k: v for k, v in stats.items() if not k.startswith(f"{WISE} α")}
    grace_group = shown[GRACE]["group"] if GRACE in shown else None
    beside = [(k, shown[k]) for k in BESIDE_GRACE
              if k in shown and grace_group is not None and shown[k]["group"] != "ablation"]
    out: list[tuple[str, dict[str, Any]] | None] = []
    for group in groups:
        part = _by_hm([(k, v) for k, v in shown.items()
                       if v["group"] == group and not (beside and k in BESIDE_GRACE)])
        if group == grace_group:
            at = next(j + 1 for j, (k, _) in enumerate(part) if k == GRACE)
            part[at:at] = beside
        if part and out:
            out.append(None)
        out.extend(part)
    return out


def markdown_table(stats: dict[str, dict[str, Any]], groups: tuple[str, ...], datasets: list[str],
                   hm_vs_grace: dict[str, PairedDiff] | None = None) -> str:
    """Markdown: one row per label of ``groups`` (see ``main_rows``), accuracies in % as mean ± std over seeds;
    with ``hm_vs_grace`` a last column: the row's paired HM difference to GRACE and its two intervals."""
    aggs = aggregate_metrics()
    head = ["method", "seeds", *[d for d in datasets], *[m.title for m in aggs]]
    if hm_vs_grace is not None:
        head.append("HM − GRACE: mean [95% CI seeds] [95% CI images]")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for item in main_rows(stats, groups):
        if item is None:
            lines.append("| " + " | ".join(["*newer baselines*", *[""] * (len(head) - 1)]) + " |")
            continue
        label, row = item
        cells = [f"**{label}**" if label == GRACE else label, str(row["n"]),
                 *[_cell(row, f"top1/{d}") for d in datasets], *[_cell(row, m.key) for m in aggs]]
        if hm_vs_grace is not None:
            d = hm_vs_grace.get(label)
            cells.append("—" if d is None else diff_cell(d))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diff_cell(d: PairedDiff) -> str:
    """``+1.23 [+0.40, +2.06] [+0.10, +2.30]`` in points (``—`` for a missing interval)."""
    t = d.t.text(100) if d.t else "[— one seed]"
    boot = d.boot.text(100) if d.boot else f"[— {d.boot_note}]"
    return f"{100 * d.mean:+.2f} {t} {boot}"


DIFF_METRICS = ("id", "ood_avg", "adv", "hm")


def paired_differences(rows: dict[str, Row], labels: list[str], boot: Bootstrap | None
                       ) -> dict[str, dict[str, PairedDiff]]:
    """``label − grace`` on each of ``DIFF_METRICS`` for every label (GRACE aside) that shares a seed with it."""
    if GRACE not in rows:
        return {}
    out: dict[str, dict[str, PairedDiff]] = {}
    for label in labels:
        if label == GRACE or label not in rows:
            continue
        diffs = {m: paired_diff(rows[label], rows[GRACE], m, boot) for m in DIFF_METRICS}
        diffs = {m: d for m, d in diffs.items() if d is not None}
        if diffs:
            out[label] = diffs
    return out


def differences_table(diffs: dict[str, dict[str, PairedDiff]]) -> str:
    """Markdown: per row, ``row − GRACE`` in points with its t-interval over seeds and bootstrap over images."""
    head = ["method − GRACE", "paired seeds", *[get_metric(m).title for m in DIFF_METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, by_metric in diffs.items():
        seeds = max((len(d.seeds) for d in by_metric.values()), default=0)
        cells = [label, str(seeds), *[diff_cell(by_metric[m]) if m in by_metric else "—" for m in DIFF_METRICS]]
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
              if row["group"] in ("main", "lora", RECENT) and not label.startswith(f"{WISE} α")
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
    tuning = tuning_file(run)
    if tuning is not None:
        try:
            written += draw("sensitivity", [tuning], fig_dir, formats=("png",), log=run.log)
        except UserError as exc:
            run.log(f"  note: no sensitivity figure ({exc})")
    if run.geometry_dir.is_dir():
        for kind in FIGURE_KINDS:
            try:
                written += draw(kind, [run.geometry_dir], fig_dir, formats=("png",), log=run.log)
            except UserError as exc:
                run.log(f"  note: no {kind} figure ({exc})")
    return written


def tuning_file(run: StudyRun) -> Path | None:
    """The tuning trials behind this study's settings: ``WORK/tuning.json`` (``--tune``), else the shipped file
    when the recipe took its choices from it; None for a study on method defaults or an lr-only file."""
    from grace_bench.study.recipe import TUNING_FILE

    local = run.work / "tuning.json"
    if local.is_file():
        return local
    if run.recipe.lr_source == TUNING_FILE.name and TUNING_FILE.is_file():
        return TUNING_FILE
    return None


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
    geo_seeds = geometry_by_seed(run, records)
    geo = geometry_values(run, records, geo_seeds)
    rows = study_rows(records, summaries)
    boot = Bootstrap()
    claims = accuracy_claims(rows, boot) + geometry_claims(geo, geo_seeds)
    table_labels = [item[0] for item in main_rows(stats, ("main", RECENT)) if item is not None]
    diffs = paired_differences(rows, table_labels, boot)
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
        "statistics": {"bootstrap": boot.to_dict(), "rule": VERDICT_RULE,
                       "vs_grace": {label: {m: d.to_dict() for m, d in by.items()} for label, by in diffs.items()}},
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
        markdown_table(stats, ("main", RECENT), datasets,
                       {k: v["hm"] for k, v in diffs.items() if "hm" in v} if GRACE in rows else None),
    ]
    if diffs:
        md += ["", "## Paired differences against GRACE", "", DIFFERENCES_NOTE, "", differences_table(diffs)]
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
    md += ["", "## The paper's claims at this scale", "", VERDICT_RULE, "", claims_markdown(claims), "",
           "## Paper (ImageNet, ViT-B/32) beside this study", "", paper_table(stats), "",
           "## Figures", "", *[f"![{p.stem}](figures/{p.name})" for p in figures], "",
           f"Wall time: {_timing_line(run)}.", ""]
    record["markdown"] = "\n".join(md)
    atomic_write_text(run.out / "study.md", record["markdown"])
    return write_record(run.out / "study.json", record, kind="study")


DIFFERENCES_NOTE = (
    "Per seed, the row's value minus GRACE's on the same seed (zero-shot, which does not depend on the seed, pairs "
    "with every seed), in points: the mean over seeds, its 95% Student-t interval over seeds, and its 95% "
    "bootstrap interval over test images (images of every test set resampled with replacement, the same draws for "
    "both rows and every seed; 2000 replicates, seed recorded in `study.json`). \"no per-image data\": result "
    "files written before the per-image flags were stored.")
VERDICT_RULE = (
    "Verdict rule (`grace_bench/study/claims.py`): a claim is a criterion d ≥ c on a paired difference d. It "
    "**holds** when both 95% intervals (t over seeds, bootstrap over test images) lie wholly at or above c, "
    "**does not hold** when both lie wholly below c, and is **inconclusive** when either straddles c or they "
    "disagree; without per-image data the t-interval alone decides (the geometry claims: no per-image metric, "
    "measured on the first `geometry_seeds` seeds); with one seed there is no interval and the verdict reads "
    "**single seed**.")


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
            f"{recipe.train_pgd_step_size}); lr per method chosen on the val split ({recipe.lr_source}): {lrs}"
            + "".join(f"; {k} knobs {_knobs(v)}" for k, v in sorted(getattr(recipe, "knobs", {}).items())))


def _knobs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in sorted(values.items()))

