"""The zeroshot suite under every protocol preset, end to end on tiny generated data in both layouts (CLIP_benchmark
shards and torchvision folders): result files per (dataset, attack, ε) naming the preset, each dataset's own prompt
hashes, clean accuracy equal to a head built by hand from the shipped lists, identical numbers from both layouts,
the per-protocol zero-shot table; absent datasets skipped with a notice, named or broken ones a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grace_bench.data.suite_spec import DataContext
from grace_bench.data.zero_shot.loaders import load_zero_shot
from grace_bench.data.zero_shot.prompts import shipped_classnames, shipped_templates
from grace_bench.errors import UserError
from grace_bench.eval.config import EvalConfig
from grace_bench.eval.protocols import PROTOCOLS, get_protocol
from grace_bench.eval.run import run_eval
from grace_bench.utils.hashing import text_list_hash
from tests.zero_shot_fixtures import make_zero_shot_root

DATASETS = ("cifar10", "pets", "eurosat")  # each has a reader in both layouts
N_IMAGES = 6  # make_zero_shot_root's default: classes (0, 1, 2), two images each


def _cfg(root: Path, out: Path, **kw) -> EvalConfig:
    base = {"checkpoint": "tiny", "suite": "zeroshot", "data_root": root, "out": out, "workers": 0,
            "batch_size": 8, "progress": False}
    return EvalConfig(**{**base, **kw})


def _records(out: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "results").rglob(f"*-{kind}-*.json"))]


def _hand_built_accuracy(clip, root: Path, dataset: str, templates) -> float:
    """Top-1 of a zero-shot head built here from the shipped class names and ``templates``."""
    from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head

    data = load_zero_shot(dataset, DataContext(root=root, preprocess=clip.preprocess, image_size=clip.image_size))
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    head = build_zero_shot_head(clip.model, clip.tokenizer, list(shipped_classnames(dataset)), list(templates))
    clf = ZeroShotClassifier(clip.model, head, clip.mean, clip.std).eval()
    with torch.no_grad():
        return (clf(x).argmax(1) == y).float().mean().item()


def _numbers(summary: dict) -> dict:
    """What must not depend on the layout: clean top-1/top-5 and, per ε, robust accuracy and flags' count."""
    clean = {d: (v["n"], v["top1"], v.get("top5")) for d, v in summary["per_dataset"].items()}
    adv = {(eps, d): (v["n"], v["clean_acc"], v["robust_acc"])
           for eps, per in (summary.get("adversarial_by_eps") or {"-": summary["adversarial"]}).items()
           for d, v in per.items()}
    return {"clean": clean, "adversarial": adv}


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_every_preset_runs_on_the_zeroshot_suite_in_both_layouts(name, tiny_clip, tmp_path, capsys):
    preset = get_protocol(name)
    limit = N_IMAGES if preset.n_adv is None else None  # grace: the suite's n_adv (1000) capped by --limit
    summaries = {}
    for layout in ("wds", "folders"):
        root = make_zero_shot_root(tmp_path, layout, DATASETS)
        summaries[layout] = run_eval(_cfg(root, tmp_path / f"out-{layout}", protocol=name, limit=limit),
                                     clip=tiny_clip)
        assert "notice: skipped" in capsys.readouterr().err  # the rest of the suite is absent: a notice, no error
    out = tmp_path / "out-wds"
    eps_list = list(preset.eps or ["1/255"])  # grace: the zeroshot suite's ε
    adv = _records(out, "adversarial")
    assert sorted((r["dataset"]["name"], r["config"]["eps"]) for r in adv) == sorted(
        (d, e) for d in DATASETS for e in eps_list)
    clean = {r["dataset"]["name"]: r for r in _records(out, "clean")}
    assert sorted(clean) == sorted(DATASETS)
    for record in adv + list(clean.values()):
        assert record["protocol_preset"]["name"] == name
        assert record["config"].get("preset") == (None if name == "grace" else name)
    for record in adv:
        assert record["metrics"]["n"] == N_IMAGES  # the full (tiny) test split: no preset count exceeds it
        if preset.attack:
            assert record["metrics"]["attack"] == preset.attack
    for dataset, record in clean.items():  # each dataset's own class names; the preset's templates if it has any
        templates = preset.templates or shipped_templates(dataset)
        assert record["config"]["classnames"] == text_list_hash(shipped_classnames(dataset))
        assert record["config"]["templates"] == text_list_hash(templates)
        assert record["dataset"]["classes"] == len(shipped_classnames(dataset))
        for a in adv:
            if a["dataset"]["name"] == dataset:
                assert a["config"]["templates"] == record["config"]["templates"]
        expected = _hand_built_accuracy(tiny_clip, tmp_path / "zs-wds", dataset, templates)
        assert summaries["wds"]["per_dataset"][dataset]["top1"] == pytest.approx(expected)
    assert _numbers(summaries["wds"]) == _numbers(summaries["folders"])
    from grace_bench.eval.report import format_summary

    printed = format_summary(summaries["wds"])  # the dataset's own templates, or the preset's count
    assert ("per-dataset templates" in printed) == (preset.templates is None)
    suffix = "" if name == "grace" else f"-{name}"
    assert (out / f"summary-{tiny_clip.fingerprint()[:12]}{suffix}.json").is_file()
    assert set(summaries["wds"]["zero_shot"]) == set(eps_list)  # the papers' table under every protocol
    z = summaries["wds"]["zero_shot"][eps_list[-1]]
    assert z["order"] == [d for d in preset.datasets.get("zeroshot", DATASETS) if d in DATASETS]
    robust = [summaries["wds"]["adversarial_by_eps"][eps_list[-1]][d]["robust_acc"] for d in DATASETS]
    assert z["robust_avg_without_imagenet"] == pytest.approx(sum(robust) / len(DATASETS))


@pytest.mark.parametrize("name", ["fare", "tecoa"])
def test_the_leaderboard_and_the_analysis_script_average_without_imagenet(name, tiny_clip, tmp_path, capsys):
    from analysis.zero_shot_table import main as table_main
    from grace_bench.leaderboard.build import build_per_protocol

    root = make_zero_shot_root(tmp_path, "wds", ("cifar10", "pets", "imagenet1k"))
    out = tmp_path / "out"
    summary = run_eval(_cfg(root, out, protocol=name), clip=tiny_clip)
    (board,) = build_per_protocol(out, tmp_path / "board")  # one protocol: the board folder itself
    assert tmp_path / "board" / "zero_shot.md" in board.files
    table = (tmp_path / "board" / "zero_shot.md").read_text()
    for eps in get_protocol(name).eps:
        robust = {d: summary["adversarial_by_eps"][eps][d]["robust_acc"] for d in ("cifar10", "pets", "imagenet1k")}
        z = summary["zero_shot"][eps]
        assert z["robust_avg_without_imagenet"] == pytest.approx((robust["cifar10"] + robust["pets"]) / 2)
        assert z["robust_avg"] == pytest.approx(sum(robust.values()) / 3)
        block = table.split(f"ε = {eps}")[1]
        header = next(ln for ln in block.splitlines() if ln.startswith("| model"))
        cols = [c.strip() for c in header.strip("|").split("|")]
        assert cols[-2:] == ["Average", "Average w/o ImageNet"] and "imagenet1k" in cols
        row = next(ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| model"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == f"{100 * z['robust_avg_without_imagenet']:.2f}"
        assert cells[-2] == f"{100 * z['robust_avg']:.2f}"
    capsys.readouterr()
    assert table_main([str(out), "--protocol", name, "--no-paper"]) == 0
    printed = capsys.readouterr().out
    assert f"protocol {name}" in printed and "Average w/o ImageNet" in printed
    tables = [t.strip() for t in table.split("\n## ")[1:]]  # the same tables the leaderboard wrote
    assert tables == [t.strip() for t in printed.split("\n## ")[1:]]


def test_datasets_run_one_at_a_time_merge_into_one_summary_of_their_own_prompts(tiny_clip, tmp_path):
    root = make_zero_shot_root(tmp_path, "wds", ("cifar10", "pets"), prompt_files=True)
    out = tmp_path / "out"
    run_eval(_cfg(root, out, protocol="fare", datasets=["cifar10"], limit=2), clip=tiny_clip)
    summary = run_eval(_cfg(root, out, protocol="fare", datasets=["pets"], limit=2), clip=tiny_clip)
    assert set(summary["per_dataset"]) == {"cifar10", "pets"}
    assert set(summary["zero_shot"]["4/255"]["datasets"]) == {"cifar10", "pets"}
    # cifar10's templates file changed since its run: that result is not of its prompts any more
    (root / "wds_vtab-cifar10" / "zeroshot_classification_templates.txt").write_text("a blurry photo of a {c}.\n")
    summary = run_eval(_cfg(root, out, protocol="fare", datasets=["pets"], limit=2), clip=tiny_clip)
    assert set(summary["per_dataset"]) == {"pets"}
    # a dataset not under this run's root at all: its newest result of the protocol is kept
    other = make_zero_shot_root(tmp_path / "b", "wds", ("pets",))
    summary = run_eval(_cfg(other, out, protocol="fare", limit=2), clip=tiny_clip)
    assert set(summary["per_dataset"]) == {"cifar10", "pets"}
    used = {d: json.loads(Path(v["result_file"]).read_text())["config"] for d, v in summary["per_dataset"].items()}
    assert used["pets"]["templates"] == text_list_hash(shipped_templates("pets"))  # this run's pets (no file)
    assert used["cifar10"]["templates"] == text_list_hash(["a photo of a {}."])  # the first run's cifar10


def test_absent_datasets_are_skipped_with_a_notice_naming_them(tiny_clip, tmp_path, capsys):
    root = make_zero_shot_root(tmp_path, "folders", ("cifar10", "pets"))
    summary = run_eval(_cfg(root, tmp_path / "out", protocol="tecoa", limit=2), clip=tiny_clip)
    assert set(summary["per_dataset"]) == {"cifar10", "pets"}
    (notice,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("notice:")]
    skipped = notice.split(": ", 2)[2].split(" (")[0].split(", ")
    assert "skipped 13 dataset(s)" in notice and "stl10" in skipped and "cifar10" not in skipped


def test_forced_folders_layout_skips_the_webdataset_only_datasets_unless_named(tiny_clip, tmp_path, capsys):
    root = make_zero_shot_root(tmp_path, "folders", ("cifar10",))
    summary = run_eval(_cfg(root, tmp_path / "out", protocol="tecoa", limit=2, data_layout="folders"),
                       clip=tiny_clip)
    assert set(summary["per_dataset"]) == {"cifar10"}
    assert "sun397" in capsys.readouterr().err  # in the notice
    with pytest.raises(UserError, match="sun397: SUN397 is read only from CLIP_benchmark's webdataset layout"):
        run_eval(_cfg(root, tmp_path / "out", protocol="tecoa", limit=2, data_layout="folders",
                      datasets=["cifar10", "sun397"]), clip=tiny_clip)


def test_a_dataset_named_with_datasets_must_be_there(tiny_clip, tmp_path):
    root = make_zero_shot_root(tmp_path, "folders", ("cifar10",))
    with pytest.raises(UserError, match=r"^pets: not found under .*oxford-iiit-pet") as err:
        run_eval(_cfg(root, tmp_path / "out", protocol="tecoa", datasets=["cifar10", "pets"], limit=2),
                 clip=tiny_clip)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "out").rglob("*-clean-*.json"))  # checked before the clean pass


def test_a_root_without_any_selected_dataset_is_an_error(tiny_clip, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="none of the 15 selected datasets of suite 'zeroshot'"):
        run_eval(_cfg(tmp_path / "empty", tmp_path / "out", protocol="tecoa"), clip=tiny_clip)


def test_the_zeroshot_suite_needs_a_data_root_and_per_dataset_class_names_before_any_work(tmp_path):
    from grace_bench.eval.plan import plan_eval

    with pytest.raises(UserError, match=r"suite 'zeroshot' reads its datasets from disk; pass --data-root"):
        plan_eval(EvalConfig(checkpoint="micro", suite="zeroshot", out=tmp_path / "out"))
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    with pytest.raises(UserError, match=r"takes class names per dataset.*classnames.txt in each dataset's folder"):
        plan_eval(EvalConfig(checkpoint="micro", suite="zeroshot", data_root=tmp_path, classnames_file=names,
                             out=tmp_path / "out"))


def _tiny_weights(clip, tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(weights))
    return weights


def test_the_cli_runs_a_preset_on_the_zeroshot_suite(tiny_clip, tmp_path, capsys):
    from grace_bench.cli import main

    root = make_zero_shot_root(tmp_path, "folders", ("cifar10", "eurosat"))
    capsys.readouterr()
    code = main(["eval", f"tiny-clip:{_tiny_weights(tiny_clip, tmp_path)}", "--suite", "zeroshot", "--data-root",
                 str(root), "--protocol", "fare", "--limit", "2", "--workers", "0", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "protocol: fare" in out and "-fare.json" in out
    assert "zero-shot average at eps 2/255" in out and "zero-shot average at eps 4/255" in out
    assert "notice: skipped 10 dataset(s)" in err  # fare's 12 zero-shot datasets, 2 of them here
    assert len(_records(tmp_path / "out", "adversarial")) == 4


@pytest.mark.parametrize("layout, victim", [("folders", "oxford-iiit-pet/annotations/test.txt"),
                                            ("wds", "wds_vtab-pets/test/nshards.txt")])
def test_a_broken_dataset_folder_is_a_one_line_error_not_a_skip(layout, victim, tiny_clip, tmp_path, capsys):
    from grace_bench.cli import main

    root = make_zero_shot_root(tmp_path, layout, ("cifar10", "pets"))
    (root / victim).unlink()
    weights = _tiny_weights(tiny_clip, tmp_path)
    capsys.readouterr()
    code = main(["eval", f"tiny-clip:{weights}", "--suite", "zeroshot", "--data-root", str(root), "--protocol",
                 "tecoa", "--limit", "2", "--workers", "0", "--out", str(tmp_path / "out"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("WARNING:root")]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: pets: ")
    assert Path(victim).name in err[0]
    assert not list((tmp_path / "out").rglob("*.json"))


@pytest.mark.parametrize("name, counts", [
    ("fare", {"cifar10": 1000, "pets": 1000, "imagenet1k": 5000}),
    ("tecoa", {"cifar10": 12000, "pets": 12000, "imagenet1k": 12000}),
    ("tga-zsr", {"cifar10": 12000, "tinyimagenet": 12000, "imagenet1k": 12000}),
    ("pmg-aft", {"cifar10": 12000, "pcam": 12000, "imagenet1k": 12000}),
    ("grace", {"cifar10": 1000, "imagenet1k": 1000}),
])
def test_each_preset_attacks_its_own_count_per_zero_shot_dataset(name, counts, tiny_clip, tmp_path):
    """FARE: 1000 per dataset and 5000 on ImageNet; TeCoA / TGA-ZSR / PMG-AFT: the whole split; grace: the suite's
    n_adv. Checked on a stand-in of 12000 images, so the counts are not capped by the data."""
    from grace_bench.data.suites import get_suite
    from grace_bench.eval.plan import adv_subset, plan_eval

    (tmp_path / "root").mkdir()
    suite = get_suite("zeroshot")
    plan = plan_eval(_cfg(tmp_path / "root", tmp_path / "out", protocol=name), tiny_clip)
    limited = plan_eval(_cfg(tmp_path / "root", tmp_path / "out", protocol=name, limit=7), tiny_clip)
    for dataset, n in counts.items():
        assert adv_subset(plan, suite, suite.dataset(dataset), range(12000), None)[1] == n
        assert adv_subset(limited, suite, suite.dataset(dataset), range(12000), 7)[1] == 7  # --limit caps it
    custom = plan_eval(_cfg(tmp_path / "root", tmp_path / "out", protocol=name, n_adv=50), tiny_clip)
    assert adv_subset(custom, suite, suite.dataset("imagenet1k"), range(12000), None)[1] == 50


def test_a_templates_file_replaces_every_datasets_templates_and_keeps_their_class_names(tiny_clip, tmp_path):
    root = make_zero_shot_root(tmp_path, "wds", ("cifar10", "pets"))
    templates = tmp_path / "templates.txt"
    templates.write_text("a tiny photo of a {}.\nart of the {}.\n")
    summary = run_eval(_cfg(root, tmp_path / "out", protocol="fare", templates_file=templates, limit=2),
                       clip=tiny_clip)
    assert summary["protocol"]["preset"] == "custom" and summary["protocol"]["preset_overrides"] == ["templates"]
    for record in _records(tmp_path / "out", "clean") + _records(tmp_path / "out", "adversarial"):
        name = record["dataset"]["name"]
        assert record["config"]["templates"] == text_list_hash(["a tiny photo of a {}.", "art of the {}."])
        assert record["config"]["classnames"] == text_list_hash(shipped_classnames(name))
        assert record["protocol_preset"]["name"] == "custom"
