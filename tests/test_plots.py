"""Every figure kind, from plain data and through ``grace-bench plot`` on synthetic result files.

Checks the files (valid PNG, PDF header) and the matplotlib objects (labels, scales, artist counts, titles).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.contour import ContourSet
from PIL import Image

from grace_bench.errors import UserError
from grace_bench.plots import (
    plot_cka_layers,
    plot_cka_methods,
    plot_landscape_1d,
    plot_landscape_2d,
    plot_landscape_3d,
    plot_layer_curvature,
    plot_radar,
    plot_spectral_density,
    plot_tradeoff,
    plot_training_curves,
    plot_wise_curve,
    read_log_jsonl,
)
from grace_bench.plots.cli import add_plot_parser, run_plot
from grace_bench.plots.style import method_styles, protocol_text
from grace_bench.plots.tradeoff import hm_isoline
from grace_bench.results.values import harmonic_mean
from tests.test_leaderboard import (
    LAYERS,
    METHODS,
    fingerprint,
    summary_dict,
    write_json,
    write_landscape_2d,
    write_synthetic_results,
)

PROTO = {"attack": "aa-standard", "norm": "Linf", "eps": "4/255", "n_adv": 100, "suite": "micro"}
PNG = ("png",)


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def assert_label_inside(fig, text) -> None:
    """``text`` is drawn and lies wholly inside the figure (not cut off at any edge)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box, frame = text.get_window_extent(canvas.get_renderer()), fig.bbox
    assert text.get_text() and box.width > 0 and box.height > 0
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (box, frame)


def title(fig) -> str:
    return fig._suptitle.get_text()


def test_landscape_1d(tmp_path):
    a = np.linspace(-1, 1, 11)
    curves = {"ft": {"alpha": a, "loss": 2 * a**2, "acc": 1 - a**2},
              "grace": {"alpha": a, "loss": a**2, "acc": 1 - a**2 / 2}}
    fig = plot_landscape_1d(curves, protocol=PROTO, out=tmp_path / "l1", formats=("png", "pdf"))
    assert_png(tmp_path / "l1.png")
    assert (tmp_path / "l1.pdf").read_bytes()[:5] == b"%PDF-"
    loss_ax, acc_ax = fig.axes[:2]
    assert len([ln for ln in loss_ax.lines if ln.get_label() in curves]) == 2
    assert "nats" in loss_ax.get_ylabel() and "filter-normalised" in loss_ax.get_xlabel()
    assert "%" in acc_ax.get_ylabel()
    assert "ε=4/255" in title(fig) and "AA-standard" in title(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ft", "grace"]
    with pytest.raises(UserError, match="lengths differ"):
        plot_landscape_1d({"x": {"alpha": a, "loss": a[:3]}})


def test_percent_ticks_stay_distinct_on_a_narrow_range():
    """Accuracy between 88.3% and 89.8%: whole-percent labels would repeat (88, 89, 89, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    a = np.linspace(0, 1, 7)
    acc = np.array([0.8828, 0.8906, 0.8906, 0.8984, 0.8828, 0.8828, 0.8906])
    fig = plot_landscape_1d({"ft": {"alpha": a, "loss": 1 - a / 2, "acc": acc}})
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[1]
    lo, hi = ax.get_ylim()
    shown = [(t.get_text(), v) for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if lo <= v <= hi]
    labels = [text for text, _ in shown]
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert all(float(text) == pytest.approx(100 * v, abs=0.01) for text, v in shown)  # percent, no % sign


def test_landscape_2d_and_3d(tmp_path):
    x, y = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    surfaces = {"ft": {"x": x, "y": y, "loss": xx**2 + 3 * yy**2}, "grace": {"x": x, "y": y, "loss": xx**2 + yy**2}}
    fig = plot_landscape_2d(surfaces, protocol=PROTO, levels=12, out=tmp_path / "l2", formats=PNG)
    assert_png(tmp_path / "l2.png")
    panels = [ax for ax in fig.axes if ax.get_title() in surfaces]
    assert len(panels) == 2
    for ax in panels:
        contours = [c for c in ax.collections if isinstance(c, ContourSet)]
        assert len(contours) == 2  # filled + lines
        assert len(contours[0].levels) == 12
        assert "direction 1" in ax.get_xlabel() and "direction 2" in ax.get_ylabel()
    # shared levels: both panels use the same scale
    lv = [[c for c in ax.collections if isinstance(c, ContourSet)][0].levels for ax in panels]
    np.testing.assert_allclose(lv[0], lv[1])
    cbar_ax = [ax for ax in fig.axes if ax not in panels][0]
    assert "nats" in cbar_ax.get_ylabel()
    with pytest.raises(UserError, match="expected"):
        plot_landscape_2d({"bad": {"x": x, "y": y, "loss": (xx**2).T}})
    fig3 = plot_landscape_3d(x, y, xx**2 + yy**2, label="grace", protocol=PROTO, out=tmp_path / "l3", formats=PNG)
    assert_png(tmp_path / "l3.png")
    assert fig3.axes[0].name == "3d" and "nats" in fig3.axes[0].get_zlabel()


def test_spectrum_log_scale(tmp_path):
    grid = np.linspace(-1, 50, 120)
    dens = {k: {"grid": grid, "density": np.exp(-(grid**2)) + 1e-3 * np.exp(-((grid - s) ** 2)), "lambda_max": s}
            for k, s in (("ft", 40.0), ("grace", 20.0), ("tecoa", 10.0))}
    fig = plot_spectral_density(dens, protocol={"dataset": "micro", "n": 128, "eps": "4/255"},
                                out=tmp_path / "spec", formats=PNG)
    assert_png(tmp_path / "spec.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert len([ln for ln in ax.lines if ln.get_label() in dens]) == 3
    assert len([ln for ln in ax.lines if ln.get_linestyle() == "--"]) == 3  # one λ_max marker each
    assert "eigenvalue" in ax.get_xlabel() and "density" in ax.get_ylabel()
    assert "ε=4/255" in title(fig) and "n=128" in title(fig)


def test_layer_curvature_bars(tmp_path):
    layers = [f"visual.transformer.resblocks.{i}.{p}" for i in range(3) for p in ("attn", "mlp")]
    curv = {"ft": {n: 10.0**i for i, n in enumerate(layers)},
            "grace": {n: 2.0**i for i, n in enumerate(layers[:4])}}
    fig = plot_layer_curvature(curv, protocol=PROTO, out=tmp_path / "curv", formats=PNG)
    assert_png(tmp_path / "curv.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 6 + 4  # a missing layer leaves a gap, not a zero bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.attn", "0.mlp", "1.attn", "1.mlp", "2.attn", "2.mlp"]
    assert ax.get_yscale() == "log"  # 5 decades
    assert ax.get_xlabel() == "layer" and "κ" in ax.get_ylabel()


def test_curvature_figure_keeps_network_order(tmp_path, capsys):
    """The tool writes JSON with sorted keys; the figure must follow the recorded ``layer_names`` instead."""
    from grace_bench.plots.api import _layer_curvature, network_order
    from grace_bench.utils.atomic import atomic_write_json

    layers = ["visual.conv1"] + [f"visual.transformer.resblocks.{i}" for i in range(12)] + ["visual.ln_post"]
    record = {"schema": "grace-bench/geometry/v1", "kind": "hessian", "label": "ft",
              "checkpoint": {"spec": "runs/ft", "fingerprint": fingerprint("ft")},
              "per_layer_curvature": {n: float(i + 1) for i, n in enumerate(layers)}, "layer_names": layers}
    path = tmp_path / "res" / f"geometry-hessian-{fingerprint('ft')[:12]}.json"
    path.parent.mkdir()
    atomic_write_json(path, record)
    assert list(json.loads(path.read_text())["per_layer_curvature"]) != layers  # sorted on disk
    from grace_bench.leaderboard.collect import load_geometry

    (rec,) = load_geometry(path.parent, "hessian")
    assert list(_layer_curvature(rec)) == layers
    out = tmp_path / "fig"
    assert _plot(["curvature", str(path.parent), "--out", str(out), "--format", "png"]) == 0
    fig = plot_layer_curvature({"ft": _layer_curvature(rec)})
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["conv1"] + [f"transformer.resblocks.{i}" for i in range(12)] + ["ln_post"]
    # without recorded names the numbers inside names are still compared as numbers
    assert network_order(["b.10", "b.2", "a"], None) == ["a", "b.2", "b.10"]


def test_cka_heatmaps(tmp_path):
    m = np.array([[1.0, 0.5, 0.2], [0.4, 0.9, 0.3], [0.1, 0.3, 0.8]])
    names = [f"visual.transformer.resblocks.{i}" for i in range(3)]
    fig = plot_cka_layers(m, names, label="grace", ref_label="zero-shot", protocol=PROTO, out=tmp_path / "ckal",
                          formats=PNG)
    assert_png(tmp_path / "ckal.png")
    ax = fig.axes[0]
    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)][0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(3, 3), m)
    assert mesh.get_clim() == (0.0, 1.0)
    assert ax.get_ylabel() == "layer of grace" and ax.get_xlabel() == "layer of zero-shot"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    for rows in (1, 3, 13):  # a long measure name: the wrapped colorbar label stays inside the figure
        names = [f"visual.transformer.resblocks.{i}" for i in range(rows)]
        fig = plot_cka_layers(np.full((rows, rows), 0.5), names, label="grace", ref_label="zero-shot",
                              measure="minibatch linear CKA (unbiased HSIC), final embedding", out=tmp_path / "long",
                              formats=PNG)
        assert_label_inside(fig, fig.axes[1].yaxis.label)
        assert "HSIC" in fig.axes[1].get_ylabel()
    mm = np.array([[1.0, 0.7], [0.7, 1.0]])
    fig = plot_cka_methods(mm, ["zero-shot", "grace"], protocol=PROTO, out=tmp_path / "ckam", formats=PNG)
    assert_png(tmp_path / "ckam.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["zero-shot", "grace"]
    with pytest.raises(UserError, match="shape"):
        plot_cka_methods(mm, ["a", "b", "c"])


def test_hm_isolines_are_exact():
    grid = np.linspace(0.3, 0.95, 50)
    for level in (0.2, 0.35):
        adv = hm_isoline(level, grid)
        ok = np.isfinite(adv)
        assert ok.sum() > 10
        for n, a in zip(grid[ok], adv[ok]):
            # any (ID, OOD) pair with harmonic mean n lies on the line: take ID = OOD = n and a skewed pair
            i = 0.97
            o = 1 / (2 / n - 1 / i) if 2 / n - 1 / i > 0 else None
            assert harmonic_mean([n, n, a]) == pytest.approx(level)
            if o is not None and 0 < o <= 1:
                assert harmonic_mean([i, o, a]) == pytest.approx(level)


def test_tradeoff_and_radar(tmp_path):
    pts = {k: {"id": v[0], "ood": float(np.mean(v[1])), "adv": (v[3] + v[2][0]) / 2} for k, v in METHODS.items()}
    fig = plot_tradeoff(pts, protocol=PROTO, out=tmp_path / "trade", formats=PNG)
    assert_png(tmp_path / "trade.png")
    ax_c, ax_h = fig.axes[:2]
    assert len(ax_c.collections) == 4 and len(ax_h.collections) == 4
    offsets = np.array([c.get_offsets()[0] for c in ax_c.collections])
    np.testing.assert_allclose(offsets[:, 0], [100 * p["id"] for p in pts.values()])
    assert "(%)" in ax_c.get_xlabel() and "(%)" in ax_h.get_ylabel()
    isolines = [ln for ln in ax_h.lines if ln.get_linestyle() == "--"]
    assert len(isolines) >= 2
    # every drawn iso-line point has the HM its label states
    labels = [t.get_text() for t in ax_h.texts if t.get_text().startswith("HM ")]
    assert len(labels) == len(isolines)
    for line, text in zip(isolines, labels):
        h = float(text.split()[1].rstrip("%")) / 100
        xs, ys = line.get_data()
        for n, a in zip(xs[::50] / 100, ys[::50] / 100):
            assert harmonic_mean([n, n, a]) == pytest.approx(h, rel=1e-6)
    assert "ε=4/255" in title(fig) and "AA-standard" in title(fig)
    full = {k: {"id": v["id"], "ood_avg": v["ood"], "adv": v["adv"], "hm": harmonic_mean(v.values())}
            for k, v in pts.items()}
    fig = plot_radar(full, protocol=PROTO, out=tmp_path / "radar", formats=PNG)
    assert_png(tmp_path / "radar.png")
    ax = fig.axes[0]
    assert ax.name == "polar" and [t.get_text() for t in ax.get_xticklabels()] == ["ID", "OOD avg", "Adv", "HM"]
    with pytest.raises(UserError, match="lacks adv"):
        plot_tradeoff({"x": {"id": 0.5, "ood": 0.4}})


def test_wise_curve(tmp_path):
    a = np.linspace(0, 1, 6)
    fig = plot_wise_curve(a[::-1], 0.8 + 0.15 * a[::-1], 0.6 + 0.1 * a[::-1] - 0.15 * a[::-1] ** 2,
                          adv=[0.1] * 6, references={"grace": {"id": 0.93, "ood": 0.66}}, protocol=PROTO,
                          out=tmp_path / "wise", formats=PNG)
    assert_png(tmp_path / "wise.png")
    ax_c, ax_a = fig.axes[:2]
    curve = ax_c.lines[0]
    np.testing.assert_allclose(curve.get_xdata(), 100 * (0.8 + 0.15 * a))  # sorted by α
    assert [t.get_text() for t in ax_c.texts] == [f"{v:g}" for v in a]
    assert len(ax_a.lines) == 3 and "α" in ax_a.get_xlabel() and "(%)" in ax_c.get_ylabel()
    assert "ε=4/255" in title(fig)


def test_training_curves_and_log_reader(tmp_path):
    log = tmp_path / "runs" / "ft" / "log.jsonl"
    log.parent.mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 2.0 / (1 + s), "lr": 1e-3, "images_per_s": 250.0}) for s in range(20)]
    lines.insert(5, json.dumps({"event": "done", "what": "x"}))  # no step: ignored
    lines.insert(12, json.dumps({"step": 10, "val_acc": 0.5, "val_n": 40}))
    log.write_text("\n".join(lines) + '\n{"step": 20, "lo')  # torn last line from a killed run
    with pytest.warns(UserWarning, match=r"log.jsonl:23 is cut off"):
        recs = read_log_jsonl(log)
    assert len(recs) == 22
    fig = plot_training_curves({"ft": recs}, protocol={"suite": "micro", "seed": 0}, out=tmp_path / "train",
                               formats=PNG)
    assert_png(tmp_path / "train.png")
    loss_ax, lr_ax, ips_ax, val_ax = fig.axes[:4]
    assert len(loss_ax.lines[0].get_xdata()) == 20
    assert list(val_ax.lines[0].get_xdata()) == [10] and "%" in val_ax.get_ylabel()
    assert loss_ax.get_yscale() == "log" and "nats" in loss_ax.get_ylabel() and "images/s" in ips_ax.get_ylabel()
    assert lr_ax.get_xlabel() == "optimiser step"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1}\n{oops\n{"step": 2, "loss": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        read_log_jsonl(bad)


@pytest.mark.parametrize("content, line, why", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\n", 1, "not UTF-8"),  # a binary file
    (b'{"step": 1, "loss": 1}\n[1, 2]\n{"step": 2, "loss": 1}\n', 2, "JSON list, not an object"),
    (b'{"step": 1, "loss": 1}\n{"step": 2, "loss"\n{"step": 3, "loss": 1}\n', 2, "not JSON"),
    (b'{"step": 1, "loss": 1}\n\xff\xfe garbage', 2, "not UTF-8"),  # a garbled last line is not a torn record
])
def test_garbled_training_log_is_a_one_line_error(tmp_path, capsys, content, line, why):
    from grace_bench.cli import main

    log = tmp_path / "runs" / "ft" / "log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_bytes(content)
    with pytest.raises(UserError, match=f"log.jsonl:{line} is .*{why}"):
        read_log_jsonl(log)
    assert main(["plot", "training", str(log.parent), "--out", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and f"{log}:{line}" in err and "delete" in err
    assert not (tmp_path / "fig").exists()


def _drawn_pixels(fig, ax, color) -> int:
    """Pixels inside ``ax`` within a small distance of ``color`` once the figure is rendered."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3].astype(float) / 255
    box = ax.get_window_extent()
    height = img.shape[0]
    crop = img[int(height - box.y1):int(height - box.y0), int(box.x0):int(box.x1)]
    return int((np.abs(crop - np.asarray(to_rgb(color))).max(axis=-1) < 0.1).sum())


def test_training_figure_of_a_short_run_at_default_log_every(tmp_path):
    """A 6-step run logs its loss once (at the last step): every panel must still show that point."""
    from grace_bench.finetune.config import FinetuneConfig
    from grace_bench.finetune.trainer import train
    from tests.test_trainer import fresh_clip, tiny_data

    assert FinetuneConfig().log_every > 6  # the default logs less often than this run has steps
    cfg = FinetuneConfig(method="ft", base="tiny-clip", suite="micro", out=str(tmp_path / "runs" / "ft"), max_steps=6,
                         batch_size=8, lr=1e-3, warmup_steps=2, progress=False, val_max_samples=16)
    data = tiny_data(16)
    train(cfg, clip=fresh_clip(), train_data=data, val_data=data)
    out = tmp_path / "fig"
    assert _plot(["training", str(tmp_path / "runs"), "--out", str(out), "--format", "png"]) == 0
    assert_png(out / "training.png")
    fig = plot_training_curves({"ft": read_log_jsonl(tmp_path / "runs" / "ft" / "log.jsonl")})
    color = method_styles(["ft"])["ft"]["color"]
    for ax in fig.axes[:4]:
        (line,) = ax.lines
        assert np.isfinite(line.get_ydata()).all() and len(line.get_xdata()) >= 1
        assert _drawn_pixels(fig, ax, color) > 20, ax.get_ylabel()  # visible, not a zero-length line
    assert list(fig.axes[3].lines[0].get_xdata()) == [2, 4, 6]  # each epoch end; the last one is logged twice


def test_style_is_consistent():
    a = method_styles(["ft", "grace", "mystery"])
    b = method_styles(["grace", "zero-shot", "ft"])
    assert a["grace"] == b["grace"] and a["ft"] == b["ft"]
    c = method_styles(["grace", "grace-gv-only"])
    assert c["grace"]["color"] != c["grace-gv-only"]["color"]
    assert protocol_text([{"eps": 4 / 255}, {"eps": "8/255"}]) == "ε={4/255 | 8/255} (mixed)"
    assert protocol_text({"adversarial": {"norm": "Linf", "eps": "4/255"}}) == "ℓ∞ · ε=4/255"
    assert protocol_text([{"eps": "4/255", "seed": 0}, {"seed": 0}]) == "ε=4/255 (some) · seed 0"


def test_pdf_and_png_bytes_are_reproducible(tmp_path):
    a = np.linspace(-1, 1, 5)
    for name in ("a", "b"):
        plot_landscape_1d({"ft": {"alpha": a, "loss": a**2}}, out=tmp_path / name, formats=("png", "pdf"))
    for ext in ("png", "pdf"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()


# --- the CLI on synthetic result files --------------------------------------------------------------------


def _plot(argv):
    parser = argparse.ArgumentParser(prog="grace-bench")
    add_plot_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plot", *argv])
    assert args.func is run_plot
    return run_plot(args)


@pytest.fixture
def results(tmp_path):
    root = write_synthetic_results(tmp_path / "res")
    write_landscape_2d(root, "ft", 2.0)
    write_landscape_2d(root, "grace", 1.0)
    for alpha in (0.0, 0.5, 1.0):
        label = f"wise-ft α={alpha:g}"
        values = (0.8 + 0.15 * alpha, [0.7, 0.5, 0.6 - 0.1 * alpha], [0.2], 0.02, 0.8)
        write_json(root / f"summary-{fingerprint(label)[:12]}.json", summary_dict(label, values, alpha=alpha))
    for run, steps in (("ft", 30), ("grace", 20)):
        log = tmp_path / "runs" / run / "log.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text("".join(json.dumps({"step": s, "loss": 1 / (1 + s), "lr": 1e-3, "images_per_s": 99.0}) + "\n"
                               for s in range(steps)))
        write_json(log.parent / "config.json", {"method": run, "suite": "micro", "seed": 0})
    return root


@pytest.mark.parametrize(
    "kind, extra, stems",
    [
        ("landscape", ["--surface"], ["landscape-1d", "landscape-2d", "landscape-3d-ft", "landscape-3d-grace"]),
        ("spectrum", [], ["spectrum"]),
        ("curvature", [], ["curvature"]),
        ("cka", [], ["cka-layers-ft", "cka-layers-grace", "cka-methods"]),
        ("tradeoff", ["--radar"], ["tradeoff", "tradeoff-radar"]),
        ("wise", [], ["wise"]),
    ],
)
def test_cli_plots_every_kind(results, tmp_path, capsys, kind, extra, stems):
    out = tmp_path / "fig"
    assert _plot([kind, str(results), "--out", str(out), "--format", "png", *extra]) == 0
    for stem in stems:
        assert_png(out / f"{stem}.png")
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(out / f"{s}.png") for s in stems)


def test_cli_training_and_errors(results, tmp_path):
    out = tmp_path / "fig"
    assert _plot(["training", str(tmp_path / "runs"), "--out", str(out), "--format", "png"]) == 0
    assert_png(out / "training.png")
    with pytest.raises(UserError, match="no such file"):
        _plot(["spectrum", str(tmp_path / "missing")])
    only_summaries = tmp_path / "only"
    only_summaries.mkdir()
    (only_summaries / "summary-0.json").write_text((results / f"summary-{fingerprint('ft')[:12]}.json").read_text())
    with pytest.raises(UserError, match="no geometry-hessian"):
        _plot(["spectrum", str(only_summaries)])
    with pytest.raises(UserError, match="at least two WiSE-FT"):
        _plot(["wise", str(only_summaries)])
    with pytest.raises(UserError, match="no log.jsonl"):
        _plot(["training", str(only_summaries)])
    with pytest.raises(SystemExit):
        _plot(["histogram", str(results)])


@pytest.mark.parametrize("target, damage", [
    ("json", b"\x89PNG\r\n\x1a\n\xff\xfe binary"),  # not UTF-8
    ("json", b'{"schema": "grace-bench/geo'),  # torn
    ("npz", b""),
    ("npz", b"\x00\x01 not an archive " * 20),
    ("npz", "truncated"),
])
def test_cli_corrupt_result_files_are_one_line_errors(results, tmp_path, capsys, target, damage):
    from grace_bench.cli import main

    (path,) = results.glob(f"geometry-hessian-{fingerprint('ft')[:12]}.{target}")
    path.write_bytes(path.read_bytes()[:200] if damage == "truncated" else damage)
    assert main(["plot", "spectrum", str(results), "--out", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(path) in err
    assert "delete it" in err and "re-run" in err


def test_readers_accept_flat_and_library_layouts(results):
    """ft is written in grace_bench.geometry's nested layout, grace in the flat one: same data comes out."""
    from grace_bench.leaderboard.collect import load_geometry
    from grace_bench.plots.api import _landscape_axes, _landscape_loss, _layer_curvature

    hess = {r.label(): r for r in load_geometry(results, "hessian")}
    assert _layer_curvature(hess["runs/ft"]) == {n: 2.0 * (1 + i) for i, n in enumerate(LAYERS)}
    assert _layer_curvature(hess["runs/grace"]) == {n: 1.0 * (1 + i) for i, n in enumerate(LAYERS)}
    for rec in hess.values():
        assert rec.array("density_density", "density").shape == rec.array("density_grid").shape == (200,)
    for rec in load_geometry(results, "landscape"):
        loss = _landscape_loss(rec)
        axes = _landscape_axes(rec, loss)
        assert [a.size for a in axes] == list(loss.shape)


def test_subtitles_name_the_recorded_attack_and_no_threat_model_without_one(tmp_path):
    """A clean-only (attack none) summary reads "no attack" with no ℓ∞/ε; an old bare custom:apgd-ce result
    is named from the settings it recorded (5 restarts), not from today's meaning of the name."""
    from grace_bench.leaderboard.collect import load_summaries
    from grace_bench.plots.api import _protocol_with_attack
    from tests.test_leaderboard import METHODS, PROTOCOL, summary_dict

    clean_only = summary_dict("zs", METHODS["ft"], protocol={**PROTOCOL, "attack": "none"})
    clean_only["adversarial"] = {}
    old = summary_dict("old", METHODS["ft"], protocol={**PROTOCOL, "attack": "custom:apgd-ce"})
    old["adversarial"]["micro"]["config"] = {"version": "custom", "attacks": ["apgd-ce"],
                                             "settings": {"apgd-ce": {"restarts": 5, "iterations": 100, "eot": 1}}}
    for s in (clean_only, old):
        write_json(tmp_path / f"summary-{fingerprint(s['label'])[:12]}.json", s)
    texts = {s.label: protocol_text(_protocol_with_attack(s)) for s in load_summaries(tmp_path)}
    assert texts["zs"].startswith("no attack · ") and "ε" not in texts["zs"] and "ℓ" not in texts["zs"]
    assert texts["old"].startswith("APGD-CE 5×100 · ℓ∞ · ε=4/255 · n_adv=100")
    assert protocol_text({"attack": "none", "norm": "Linf", "eps": "4/255"}) == "no attack"
