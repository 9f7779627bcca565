"""The zero-shot dataset suite: both layouts load the same data, prompts and their overrides, broken folders."""

from __future__ import annotations

import collections
import io
import pickle
import tarfile

import pytest
import torch

from grace_bench.data.suite_spec import DataContext
from grace_bench.data.suites import get_suite
from grace_bench.data.zero_shot import ZERO_SHOT_DATASETS, ZERO_SHOT_TITLES, load_zero_shot, zero_shot_prompts
from grace_bench.data.zero_shot.prompts import shipped_classnames, shipped_templates
from grace_bench.data.zero_shot.safe_pickle import load_array_pickle
from grace_bench.errors import UserError
from grace_bench.utils.transforms import pixel_preprocess
from tests.zero_shot_fixtures import FOLDER_DATASETS, make_zero_shot_root, tinyimagenet_names

SIZE = 16
KEYS = ("cifar10", "cifar100", "stl10", "caltech101", "caltech256", "pets", "flowers102", "fgvc_aircraft", "cars",
        "sun397", "food101", "eurosat", "dtd", "pcam", "imagenet1k", "tinyimagenet")


def _ctx(root, layout: str = "auto") -> DataContext:
    return DataContext(root=root, preprocess=pixel_preprocess(SIZE), image_size=SIZE, layout=layout)


def _same(a, b) -> None:
    assert len(a) == len(b) and list(a.targets) == list(b.targets) and tuple(a.classes) == tuple(b.classes)
    for i in range(len(a)):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert ya == yb and torch.equal(xa, xb)


def test_keys_titles_and_suite_registration():
    assert ZERO_SHOT_DATASETS == KEYS and set(ZERO_SHOT_TITLES) == set(KEYS)
    suite = get_suite("zeroshot")
    assert tuple(d.name for d in suite.datasets) == KEYS
    assert all(d.role == "zero-shot" and d.attacked and d.optional and d.prompts for d in suite.datasets)
    assert suite.needs_root and suite.default_checkpoint == "ViT-B-32:openai" and suite.eps == "1/255"


@pytest.mark.parametrize("key,count", [("cifar10", 10), ("cifar100", 100), ("stl10", 10), ("caltech101", 102),
                                       ("pets", 37), ("flowers102", 102), ("fgvc_aircraft", 100), ("cars", 196),
                                       ("sun397", 397), ("food101", 101), ("eurosat", 10), ("dtd", 47), ("pcam", 2),
                                       ("imagenet1k", 1000)])
def test_shipped_class_names_have_each_datasets_class_count(key, count):
    names = shipped_classnames(key)
    assert len(names) == count
    if key == "imagenet1k":  # OpenAI's curated names (two are repeated: crane, maillot), as open_clip ships them
        from grace_bench.data.imagenet_meta import imagenet_classnames

        assert names == imagenet_classnames()
    else:
        assert len(set(names)) == count


def test_shipped_templates_are_format_strings_for_every_dataset():
    for key in KEYS:
        templates = shipped_templates(key)
        assert templates and all("{}" in t and "{c}" not in t for t in templates)
    assert len(shipped_templates("imagenet1k")) == 80 and len(shipped_templates("cifar10")) == 18


@pytest.mark.parametrize("dataset", FOLDER_DATASETS)
def test_both_layouts_load_the_same_images_and_labels(tmp_path, dataset):
    classes = (0, 3, 4) if dataset != "tinyimagenet" else (0, 2, 4)
    folders = make_zero_shot_root(tmp_path, "folders", [dataset], classes=classes)
    shards = make_zero_shot_root(tmp_path, "wds", [dataset], classes=classes)
    a = load_zero_shot(dataset, _ctx(folders, "folders"))
    b = load_zero_shot(dataset, _ctx(shards, "wds"))
    assert type(b).__name__ == "ShardedImageDataset" and type(a).__name__ != type(b).__name__
    _same(a, b)
    assert a.targets == [c for c in classes for _ in range(2)]


def test_cifar_binary_batches_match_the_python_ones(tmp_path):
    py = make_zero_shot_root(tmp_path / "py", "folders", ["cifar10", "cifar100"])
    binary = make_zero_shot_root(tmp_path / "bin", "folders", ["cifar10", "cifar100"], cifar_binary=True)
    for key in ("cifar10", "cifar100"):
        _same(load_zero_shot(key, _ctx(py)), load_zero_shot(key, _ctx(binary)))


def test_tinyimagenet_names_come_from_its_wnids(tmp_path):
    root = make_zero_shot_root(tmp_path, "folders", ["tinyimagenet"])
    prompts = zero_shot_prompts("tinyimagenet", _ctx(root))
    assert list(prompts.classnames) == tinyimagenet_names() and prompts.classnames_source == "data"


def test_auto_layout_prefers_torchvision_folders_then_shards(tmp_path):
    root = make_zero_shot_root(tmp_path, "wds", ["cifar10"])
    assert type(load_zero_shot("cifar10", _ctx(root))).__name__ == "ShardedImageDataset"
    make_zero_shot_root(tmp_path, "folders", ["cifar10"])
    (tmp_path / "zs-folders" / "cifar-10-batches-py").rename(root / "cifar-10-batches-py")
    assert type(load_zero_shot("cifar10", _ctx(root))).__name__ == "ArrayImageDataset"


def test_a_torchvision_root_one_level_down_is_found(tmp_path):
    """``DIR/eurosat/eurosat/2750`` (torchvision's root given as ``DIR/eurosat``) is found like ``DIR/eurosat/2750``."""
    flat = make_zero_shot_root(tmp_path, "folders", ["eurosat"])
    nested = tmp_path / "nested"
    (nested / "eurosat").mkdir(parents=True)
    (flat / "eurosat").rename(nested / "eurosat" / "eurosat")
    assert len(load_zero_shot("eurosat", _ctx(nested))) == 6


def test_user_prompt_files_override_the_shipped_lists_and_change_the_hash(tmp_path):
    root = make_zero_shot_root(tmp_path, "wds", ["cifar10"])
    suite = get_suite("zeroshot")
    spec = suite.dataset("cifar10")
    shipped = zero_shot_prompts("cifar10", _ctx(root))
    assert shipped.classnames_source == shipped.templates_source == "shipped"
    assert spec.prompts(_ctx(root)) == (shipped_classnames("cifar10"), shipped_templates("cifar10"))
    folder = root / "wds_vtab-cifar10"
    names = [f"thing {i}" for i in range(10)]
    (folder / "classnames.txt").write_text("\n".join(names) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a picture of a {c}.\nart of the {c}.\n")
    user = zero_shot_prompts("cifar10", _ctx(root))
    assert spec.prompts(_ctx(root)) == (tuple(names), ("a picture of a {}.", "art of the {}."))
    assert user.classnames_source == str(folder / "classnames.txt")
    assert user.record()["classnames"] != shipped.record()["classnames"]
    assert user.record()["templates"] != shipped.record()["templates"]
    assert load_zero_shot("cifar10", _ctx(root)).classes == tuple(names)


def test_imagenet1k_reads_the_imagenet_suites_layouts_with_clip_benchmark_names(tmp_path):
    root = make_zero_shot_root(tmp_path, "wds", ["imagenet1k"])
    dataset = load_zero_shot("imagenet1k", _ctx(root, "wds"))
    assert dataset.targets == [0, 0, 1, 1, 2, 2] and dataset.classes == shipped_classnames("imagenet1k")


def test_a_missing_dataset_names_both_layouts_only_when_loaded(tmp_path):
    make_zero_shot_root(tmp_path, "wds", ["cifar10"])
    suite = get_suite("zeroshot")  # building the suite touches no data
    with pytest.raises(UserError) as err:
        suite.dataset("pets").load(_ctx(tmp_path / "zs-wds"))
    msg = str(err.value)
    assert "\n" not in msg and "wds_vtab-pets" in msg and "oxford-iiit-pet" in msg
    with pytest.raises(UserError, match="only from CLIP_benchmark's webdataset layout"):
        load_zero_shot("sun397", _ctx(tmp_path, "folders"))


def _damage(folder, damage: str) -> None:
    test = folder / "test"
    if damage == "no_nshards":
        (test / "nshards.txt").unlink()
    elif damage == "no_image":
        with tarfile.open(test / "0.tar", "w") as tar:
            info = tarfile.TarInfo("s0000000.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    elif damage == "cls_out_of_range":
        (folder / "classnames.txt").write_text("only\nthree\nnames\n")
    elif damage == "bad_template":
        (folder / "zeroshot_classification_templates.txt").write_text("a photo without a placeholder\n")
    elif damage == "empty":
        for p in sorted(folder.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()


@pytest.mark.parametrize("damage", ["no_nshards", "no_image", "cls_out_of_range", "bad_template", "empty"])
def test_broken_shard_folders_give_one_line_errors_naming_the_file(tmp_path, damage):
    root = make_zero_shot_root(tmp_path, "wds", ["cifar10"], classes=(0, 5, 9))
    folder = root / "wds_vtab-cifar10"
    _damage(folder, damage)
    with pytest.raises(UserError) as err:
        load_zero_shot("cifar10", _ctx(root, "wds"))
    msg = str(err.value)
    assert "\n" not in msg and str(folder) in msg


@pytest.mark.parametrize("dataset,victim", [("pets", "oxford-iiit-pet/annotations/test.txt"),
                                            ("food101", "food-101/meta/classes.txt"),
                                            ("stl10", "stl10_binary/test_y.bin"),
                                            ("flowers102", "flowers-102/setid.mat")])
def test_broken_torchvision_folders_give_one_line_errors(tmp_path, dataset, victim):
    root = make_zero_shot_root(tmp_path, "folders", [dataset])
    (root / victim).unlink()
    with pytest.raises(UserError) as err:
        load_zero_shot(dataset, _ctx(root))
    assert "\n" not in str(err.value) and victim.rsplit("/", 1)[-1] in str(err.value)


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("payload", [{b"data": _Boom()}, {"labels": [1, 2], "bad": collections.Counter()}])
def test_a_malicious_cifar_pickle_is_refused_without_running(tmp_path, payload):
    root = make_zero_shot_root(tmp_path, "folders", ["cifar10"])
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match="refused without running it") as err:
        load_zero_shot("cifar10", _ctx(root))
    assert "\n" not in str(err.value)


def test_an_object_array_in_a_cifar_pickle_is_refused(tmp_path):
    import numpy as np

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": np.array([object()], dtype=object)}, protocol=2))
    with pytest.raises(UserError, match="refused"):
        load_array_pickle(path, "fix it")


def _py2_binstring(b: bytes) -> bytes:
    return b"T" + len(b).to_bytes(4, "little") + b


def test_a_python2_cifar_pickle_is_read_like_torchvisions_latin1_load(tmp_path):
    """CIFAR's files were written by Python 2: str payloads and ``numpy.core.multiarray._reconstruct``."""
    import numpy as np

    data = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    s = _py2_binstring
    blob = (b"\x80\x02}q\x00(" + s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02"
            b"K\x00\x85" + s(b"b") + b"\x87R(K\x01K\x02M\x00\x0c\x86cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
            b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(data.tobytes()) + b"tb"
            + s(b"labels") + b"]q\x03(K\x01K\x07eu.")
    path = tmp_path / "test_batch"
    path.write_bytes(blob)
    assert (pickle.loads(blob, encoding="latin1")["data"] == data).all()  # the blob is what torchvision would read
    batch = load_array_pickle(path, "fix it")
    assert (batch["data"] == data).all() and batch["labels"] == [1, 7]


@pytest.mark.parametrize("dataset,meta", [("cifar100", "cifar-100-python/meta"),
                                          ("food101", "food-101/meta/classes.txt"),
                                          ("stl10", "stl10_binary/class_names.txt"),
                                          ("fgvc_aircraft", "fgvc-aircraft-2013b/data/variants.txt")])
def test_shipped_names_out_of_the_datas_order_are_refused_unless_overridden(tmp_path, dataset, meta):
    root = make_zero_shot_root(tmp_path, "folders", [dataset])
    assert len(load_zero_shot(dataset, _ctx(root))) == 6  # the data's own list agrees with the shipped one
    names = [n.replace(" ", "_") for n in shipped_classnames(dataset)]
    names[0], names[1] = names[1], names[0]
    if meta.endswith("meta"):
        (root / meta).write_bytes(pickle.dumps({b"fine_label_names": [n.encode() for n in names]}, protocol=2))
    else:
        (root / meta).write_text("\n".join(names) + "\n")
    with pytest.raises(UserError, match="classnames.txt") as err:
        load_zero_shot(dataset, _ctx(root))
    assert "\n" not in str(err.value)
    folder = root / meta.split("/")[0]
    (folder / "classnames.txt").write_text("\n".join(names) + "\n")
    assert load_zero_shot(dataset, _ctx(root)).classes == tuple(names)


def test_catalog_readers_and_docs_table_agree():
    """Every dataset with a torchvision folder has a reader, and docs/zero-shot-data.md says which ones do."""
    from pathlib import Path

    from grace_bench.data.zero_shot.catalog import BY_KEY
    from grace_bench.data.zero_shot.loaders import FOLDER_READERS, IMAGENET

    with_folders = {k for k, info in BY_KEY.items() if info.torchvision_dirs}
    assert with_folders - {IMAGENET} == set(FOLDER_READERS)
    assert set(FOLDER_DATASETS) == set(FOLDER_READERS)  # the fixtures write every layout-2 dataset
    page = (Path(__file__).resolve().parents[1] / "docs" / "zero-shot-data.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[5].strip() for line in page.splitlines()
            if line.startswith("| `") and len(line.split("|")) == 7}
    assert set(rows) == set(BY_KEY)
    assert {k for k, cell in rows.items() if cell.startswith("yes")} == with_folders
