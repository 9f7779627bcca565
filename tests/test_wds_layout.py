"""CLIP_benchmark webdataset shards and image folders made from the same images give the same evaluation."""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grace_bench.data import imagenet as inet
from grace_bench.data import imagenet_meta as meta
from grace_bench.data.suite_spec import DataContext
from grace_bench.data.wds_shards import rank_share
from grace_bench.errors import UserError
from grace_bench.eval.config import EvalConfig
from grace_bench.utils.transforms import pixel_preprocess

SIZE = 16
TEMPLATES = ["a photo of a {}."]
PER_SHARD = 3


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_pair(root: Path, name: str, folder: str, classes: list[str], samples: list[tuple[bytes, str]],
               thousand_labels: bool = False) -> list[int]:
    """Write ``root/<folder>/<wnid>/*.JPEG`` and ``root/wds_*/`` shards (CLIP_benchmark's writer conventions) from
    the same JPEG bytes, in torchvision ImageFolder order. ``samples``: (JPEG bytes, wnid). Returns the shard
    ``cls`` values written."""
    import webdataset as wds

    tree = root / folder
    for c in classes:
        (tree / c).mkdir(parents=True, exist_ok=True)
    ordered = []
    for k, (data, wnid) in enumerate(samples):
        file = f"img_{k:03d}.JPEG"
        (tree / wnid / file).write_bytes(data)
        ordered.append((wnid, file, data))
    shard_dir = root / inet.WDS_FOLDERS[name]
    (shard_dir / "test").mkdir(parents=True)
    index = meta.wnid_to_index()
    written = []
    with wds.ShardWriter(str(shard_dir / "test" / "%d.tar"), maxcount=PER_SHARD, verbose=0) as sink:
        for i, (wnid, _, data) in enumerate(sorted(ordered)):
            cls = index[wnid] if thousand_labels else classes.index(wnid)
            sink.write({"__key__": f"s{i:07d}", "jpg": data, "cls": cls})
            written.append(cls)
        n_shards = sink.shard
    (shard_dir / "test" / "nshards.txt").write_text(f"{n_shards}\n")
    names = meta.imagenet_wnids() if thousand_labels else classes
    (shard_dir / "classnames.txt").write_text("\n".join(names) + "\n")
    (shard_dir / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return written


def simple_samples(classes: list[str], used: list[str], per_class: int = 2) -> list[tuple[bytes, str]]:
    return [(_jpeg(zlib.crc32(f"{c}{k}".encode())), c) for c in used for k in range(per_class)]


def half_right(clip, name: str, classes: list[str], n: int = 6) -> list[tuple[bytes, str]]:
    """``n`` images, the first half filed under the class ``clip`` predicts for them and the rest under another
    class, so a correct loader scores exactly 1/2 and any label mix-up changes the score."""
    from grace_bench.data.suites import get_suite
    from grace_bench.eval.context import classifier_for

    suite = get_suite("imagenet")
    clf = classifier_for(clip, suite, suite.dataset(name), TEMPLATES)
    out = []
    for k in range(n):
        data = _jpeg(1000 + k)
        with Image.open(io.BytesIO(data)) as im:
            x = clip.preprocess(im.convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            pred = int(clf(x).argmax())
        out.append((data, classes[pred] if k < n // 2 else classes[(pred + 1) % len(classes)]))
    return out


def _ctx(root: Path, layout: str = "auto") -> DataContext:
    return DataContext(root=root, preprocess=pixel_preprocess(SIZE), image_size=SIZE, allow_empty_classes=True,
                       layout=layout)


def _same_items(a, b) -> None:
    assert len(a) == len(b) and a.targets == b.targets and a.class_subset == b.class_subset
    assert tuple(a.classes) == tuple(b.classes)
    for i in range(len(a)):
        xa, ya = a[i]
        xb, yb = b[i]
        assert ya == yb and torch.equal(xa, xb)


@pytest.fixture
def both_layouts(tmp_path):
    wnids = list(meta.imagenet_wnids())
    write_pair(tmp_path, "imagenet", "imagenet/val", wnids, simple_samples(wnids, [wnids[3], wnids[500], wnids[999]]))
    r = list(meta.imagenet_r_wnids())
    cls = write_pair(tmp_path, "imagenet-r", "imagenet-r", r, simple_samples(r, [r[0], r[77], r[199]]))
    assert max(cls) == 199  # 200-class labels, as CLIP_benchmark's converter writes them
    return tmp_path


def test_shards_and_folders_load_identical_samples(both_layouts):
    for loader in (inet.imagenet_val, inet.imagenet_r):
        folders = loader(_ctx(both_layouts, "folders"))
        shards = loader(_ctx(both_layouts, "wds"))
        assert type(shards).__name__ == "ShardedImageDataset" and len(shards.shard_ranges) == 2
        _same_items(folders, shards)
    assert inet.imagenet_r(_ctx(both_layouts, "wds")).targets == [0, 0, 77, 77, 199, 199]


def test_thousand_class_labels_in_r_shards_map_through_the_official_list(tmp_path):
    r = list(meta.imagenet_r_wnids())
    write_pair(tmp_path, "imagenet-r", "imagenet-r", r, simple_samples(r, [r[5], r[150]]), thousand_labels=True)
    _same_items(inet.imagenet_r(_ctx(tmp_path, "folders")), inet.imagenet_r(_ctx(tmp_path, "wds")))


def test_eval_harness_gives_identical_results_on_both_layouts(tiny_clip, tmp_path):
    from grace_bench.eval.run import run_eval

    data = tmp_path / "data"
    wnids, r = list(meta.imagenet_wnids()), list(meta.imagenet_r_wnids())
    write_pair(data, "imagenet", "imagenet/val", wnids, half_right(tiny_clip, "imagenet", wnids))
    write_pair(data, "imagenet-r", "imagenet-r", r, half_right(tiny_clip, "imagenet-r", r))
    templates = tmp_path / "templates.txt"
    templates.write_text(TEMPLATES[0] + "\n")
    results = {}
    for layout in ("folders", "wds"):
        cfg = EvalConfig(checkpoint="tiny", suite="imagenet", data_root=data, data_layout=layout,
                         datasets=["imagenet", "imagenet-r"], out=tmp_path / layout, attack="none", workers=0,
                         batch_size=4, progress=False, templates_file=templates, allow_empty_classes=True)
        summary = run_eval(cfg, clip=tiny_clip)
        assert set(summary["per_dataset"]) == {"imagenet", "imagenet-r"}
        results[layout] = {}
        for f in sorted((tmp_path / layout / "results").rglob("*.json")):
            rec = json.loads(f.read_text())
            results[layout][rec["dataset"]["name"]] = {k: v for k, v in rec["metrics"].items() if k != "data_report"}
    assert results["folders"] == results["wds"]
    assert results["wds"]["imagenet"]["top1"] == results["wds"]["imagenet-r"]["top1"] == 0.5


def test_auto_layout_prefers_folders_and_falls_back_to_shards(both_layouts):
    assert type(inet.imagenet_val(_ctx(both_layouts))).__name__ == "ImageFolderDataset"
    for f in (both_layouts / "imagenet/val").iterdir():
        for img in f.iterdir():
            img.unlink()
        f.rmdir()
    (both_layouts / "imagenet/val").rmdir()
    assert type(inet.imagenet_val(_ctx(both_layouts))).__name__ == "ShardedImageDataset"


@pytest.mark.parametrize("damage", ["no_count", "bad_count", "missing_shard", "not_tar", "no_cls", "unknown_layout"])
def test_broken_shard_folders_give_one_line_user_errors(tmp_path, damage):
    r = list(meta.imagenet_r_wnids())
    write_pair(tmp_path, "imagenet-r", "imagenet-r", r, simple_samples(r, [r[0], r[1]]))
    test_dir = tmp_path / "wds_imagenet-r" / "test"
    layout = "wds"
    if damage == "no_count":
        (test_dir / "nshards.txt").unlink()
    elif damage == "bad_count":
        (test_dir / "nshards.txt").write_text("two\n")
    elif damage == "missing_shard":
        (test_dir / "1.tar").unlink()
    elif damage == "not_tar":
        (test_dir / "1.tar").write_bytes(b"garbage" * 100)
    elif damage == "no_cls":
        with tarfile.open(test_dir / "1.tar", "w") as tar:
            info = tarfile.TarInfo("s0000009.jpg")
            data = _jpeg(1)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    else:
        layout = "sideways"
    with pytest.raises(UserError) as err:
        inet.imagenet_r(_ctx(tmp_path, layout))
    assert "\n" not in str(err.value)


def test_rank_share_deals_whole_shards_and_covers_every_index(both_layouts):
    ds = inet.imagenet_val(_ctx(both_layouts, "wds"))
    shares = [rank_share(ds, range(len(ds)), r, 2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(len(ds)))
    assert shares == [list(range(*ds.shard_ranges[0])), list(range(*ds.shard_ranges[1]))]
    three = [rank_share(ds, range(len(ds)), r, 3) for r in range(3)]
    assert sorted(sum(three, [])) == list(range(len(ds)))


def test_clean_pass_saves_its_state_at_each_shard_end_and_resumes(both_layouts, tiny_clip, tmp_path):
    from grace_bench.eval.clean import evaluate_clean
    from grace_bench.models.zero_shot import ZeroShotClassifier

    ds = inet.imagenet_val(_ctx(both_layouts, "wds"))
    head = torch.nn.functional.normalize(torch.randn(tiny_clip.model.visual.output_dim, 1000), dim=0)
    clf = ZeroShotClassifier(tiny_clip.model, head, tiny_clip.mean, tiny_clip.std).eval()
    partial = tmp_path / "partial.json"
    full = evaluate_clean(clf, ds, range(len(ds)), batch_size=2, progress=False)

    class Killed(Exception):
        pass

    calls = {"n": 0}

    def dies_in_second_shard(module, args):
        calls["n"] += 1
        if calls["n"] == 3:  # batches of 2 over shards of 3: batch 2 finishes shard 0, batch 3 is in shard 1
            raise Killed

    hook = clf.register_forward_pre_hook(dies_in_second_shard)
    with pytest.raises(Killed):
        evaluate_clean(clf, ds, range(len(ds)), batch_size=2, progress=False, partial_path=partial, partial_key="k")
    hook.remove()
    assert json.loads(partial.read_text())["done"] == 4  # saved when shard 0 (3 samples) was finished
    resumed = evaluate_clean(clf, ds, range(len(ds)), batch_size=2, progress=False, partial_path=partial,
                             partial_key="k")
    assert {k: v for k, v in resumed.items() if k != "forward_seconds"} == {
        k: v for k, v in full.items() if k != "forward_seconds"}


def test_auto_workers_leave_the_main_process_a_core(monkeypatch):
    from grace_bench.eval import batching

    monkeypatch.setattr(batching, "usable_cores", lambda: 1)
    assert batching.auto_workers(None, 4) == 0  # one core: a worker only adds inter-process cost
    monkeypatch.setattr(batching, "usable_cores", lambda: 8)
    assert batching.auto_workers(None, 4) == 7 and batching.auto_workers(None, 0) == 0
    assert batching.auto_workers(3, 4) == 3
    monkeypatch.setattr(batching, "usable_cores", lambda: 96)
    assert batching.auto_workers(None, 4) == batching.MAX_AUTO_WORKERS


def test_complete_val_shards_carry_robustbench_ids_when_labels_match_folder_order():
    from grace_bench.data.imagenet_wds import _sample_ids, val_ids_in_folder_order
    from grace_bench.data.wds_shards import ShardSample

    known = val_ids_in_folder_order()
    assert len(known) == 50_000 and [sid for sid, _ in known] == sorted(sid for sid, _ in known)
    samples = [ShardSample(i // 10_000, f"s{i:07d}", "webp", 0, 1, label) for i, (_, label) in enumerate(known)]
    labels = [s.cls for s in samples]
    ids = _sample_ids("imagenet", samples, labels)
    rb = meta.robustbench_imagenet_ids()
    position = {sid: i for i, sid in enumerate(ids)}
    assert all(labels[position[sid]] == meta.wnid_to_index()[sid.split("/")[0]] for sid in rb[:100])
    shuffled = labels[1:] + labels[:1]  # labels not in folder order: no ids are claimed
    assert _sample_ids("imagenet", samples, shuffled)[0] == "0/s0000000"


def test_adversarial_subset_on_incomplete_val_shards_is_a_one_line_user_error(both_layouts):
    ds = inet.imagenet_val(_ctx(both_layouts, "wds"))
    with pytest.raises(UserError, match="50,000") as err:
        inet.robustbench_indices(ds, 10)
    assert "\n" not in str(err.value)
