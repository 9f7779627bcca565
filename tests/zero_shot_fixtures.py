"""Tiny zero-shot dataset roots in both layouts (CLIP_benchmark webdataset shards, torchvision folders).

``make_zero_shot_root(tmp_path, layout, datasets, n_per_class, classes)`` writes, for each dataset, the same
generated images with the same labels in the same order: ``layout="wds"`` as ``<root>/<CLIP_benchmark folder>/test/
{nshards.txt,0.tar,...}`` (PNG members, so pixels survive exactly), ``layout="folders"`` as the files torchvision's
reader of that dataset expects. Shared by the data-layer tests and the protocol-preset tests.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

FOLDER_DATASETS = ("cifar10", "cifar100", "stl10", "pets", "flowers102", "dtd", "food101", "eurosat",
                   "fgvc_aircraft", "cars", "tinyimagenet")
SIDE = {"cifar10": 32, "cifar100": 32, "stl10": 96}
PER_SHARD = 3
EUROSAT_FOLDERS = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")


def image_array(dataset: str, label: int, k: int) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 image for sample ``k`` of class ``label``."""
    side = SIDE.get(dataset, 24)
    rng = np.random.default_rng(zlib.crc32(f"{dataset}/{label}/{k}".encode()))
    return rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _samples(dataset: str, classes: Sequence[int], n_per_class: int) -> list[tuple[int, int, np.ndarray]]:
    return [(label, k, image_array(dataset, label, k)) for label in classes for k in range(n_per_class)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, samples: Sequence[tuple[int, np.ndarray]], image_key: str = "png") -> None:
    """CLIP_benchmark's layout: ``test/nshards.txt`` and ``test/{i}.tar`` of ``s%07d.<image_key>`` + ``.cls``."""
    test = folder / "test"
    test.mkdir(parents=True, exist_ok=True)
    chunks = [samples[i:i + PER_SHARD] for i in range(0, len(samples), PER_SHARD)]
    for number, chunk in enumerate(chunks):
        with tarfile.open(test / f"{number}.tar", "w") as tar:
            for j, (label, array) in enumerate(chunk):
                key = f"s{number * PER_SHARD + j:07d}"
                _add(tar, f"{key}.{image_key}", png_bytes(array))
                _add(tar, f"{key}.cls", str(label).encode())
    (test / "nshards.txt").write_text(f"{len(chunks)}\n")


def _cifar(root: Path, dataset: str, samples, binary: bool) -> None:
    from grace_bench.data.zero_shot.prompts import shipped_classnames

    data = np.stack([a.transpose(2, 0, 1).reshape(-1) for _, _, a in samples]).astype(np.uint8)
    labels = [lab for lab, _, _ in samples]
    names = [n.replace(" ", "_") for n in shipped_classnames(dataset)]  # CIFAR's meta files spell them so
    if binary:
        folder = root / ("cifar-10-batches-bin" if dataset == "cifar10" else "cifar-100-binary")
        folder.mkdir(parents=True)
        meta = "batches.meta.txt" if dataset == "cifar10" else "fine_label_names.txt"
        (folder / meta).write_text("\n".join(names) + "\n")
        prefix = [[lab] if dataset == "cifar10" else [0, lab] for lab in labels]
        rows = np.concatenate([np.array(prefix, dtype=np.uint8), data], axis=1)
        rows.tofile(folder / ("test_batch.bin" if dataset == "cifar10" else "test.bin"))
        return
    folder = root / ("cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if dataset == "cifar10" else "fine_labels"
    batch = {b"batch_label": b"testing batch 1 of 1", key.encode(): labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    (folder / ("test_batch" if dataset == "cifar10" else "test")).write_bytes(pickle.dumps(batch, protocol=2))
    meta, meta_key = ("batches.meta", b"label_names") if dataset == "cifar10" else ("meta", b"fine_label_names")
    (folder / meta).write_bytes(pickle.dumps({meta_key: [n.encode() for n in names]}, protocol=2))


def _stl10(root: Path, samples) -> None:
    from grace_bench.data.zero_shot.prompts import shipped_classnames

    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(shipped_classnames("stl10")) + "\n")
    np.stack([a.transpose(2, 1, 0) for _, _, a in samples]).astype(np.uint8).tofile(folder / "test_X.bin")
    np.array([lab + 1 for lab, _, _ in samples], dtype=np.uint8).tofile(folder / "test_y.bin")


def _files(root: Path, dataset: str, samples) -> None:
    from grace_bench.data.zero_shot.prompts import shipped_classnames

    if dataset == "pets":
        folder = root / "oxford-iiit-pet"
        (folder / "images").mkdir(parents=True)
        (folder / "annotations").mkdir()
        lines = []
        for lab, k, a in samples:
            (folder / "images" / f"breed{lab}_{k}.jpg").write_bytes(png_bytes(a))
            lines.append(f"breed{lab}_{k} {lab + 1} 1 {lab + 1}")
        (folder / "annotations" / "test.txt").write_text("\n".join(lines) + "\n")
    elif dataset == "flowers102":
        from scipy.io import savemat

        folder = root / "flowers-102"
        (folder / "jpg").mkdir(parents=True)
        labels = [lab + 1 for lab, _, _ in samples] + [1]  # one more image, in no test split
        for i, (_, _, a) in enumerate(samples, start=1):
            (folder / "jpg" / f"image_{i:05d}.jpg").write_bytes(png_bytes(a))
        savemat(folder / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
        savemat(folder / "setid.mat", {"tstid": np.arange(1, len(samples) + 1)[None, :],
                                       "trnid": np.array([[len(labels)]])})
    elif dataset == "dtd":
        data = root / "dtd" / "dtd"
        names = shipped_classnames("dtd")
        for n in names:
            (data / "images" / n).mkdir(parents=True)
        (data / "labels").mkdir()
        lines = []
        for lab, k, a in samples:
            (data / "images" / names[lab] / f"{names[lab]}_{k:04d}.jpg").write_bytes(png_bytes(a))
            lines.append(f"{names[lab]}/{names[lab]}_{k:04d}.jpg")
        (data / "labels" / "test1.txt").write_text("\n".join(lines) + "\n")
    elif dataset == "food101":
        folder = root / "food-101"
        names = [n.replace(" ", "_") for n in shipped_classnames("food101")]
        (folder / "meta").mkdir(parents=True)
        (folder / "meta" / "classes.txt").write_text("\n".join(names) + "\n")
        lines = []
        for lab, k, a in samples:
            (folder / "images" / names[lab]).mkdir(parents=True, exist_ok=True)
            (folder / "images" / names[lab] / f"{100 + k}.jpg").write_bytes(png_bytes(a))
            lines.append(f"{names[lab]}/{100 + k}")
        (folder / "meta" / "test.txt").write_text("\n".join(lines) + "\n")
    elif dataset == "eurosat":
        data = root / "eurosat" / "2750"
        for n in EUROSAT_FOLDERS:
            (data / n).mkdir(parents=True)
        for lab, k, a in samples:
            (data / EUROSAT_FOLDERS[lab] / f"{EUROSAT_FOLDERS[lab]}_{k + 1}.jpg").write_bytes(png_bytes(a))
    elif dataset == "fgvc_aircraft":
        data = root / "fgvc-aircraft-2013b" / "data"
        (data / "images").mkdir(parents=True)
        names = shipped_classnames("fgvc_aircraft")
        (data / "variants.txt").write_text("\n".join(names) + "\n")
        lines = []
        for i, (lab, _, a) in enumerate(samples):
            (data / "images" / f"{1000000 + i}.jpg").write_bytes(png_bytes(a))
            lines.append(f"{1000000 + i} {names[lab]}")
        (data / "images_variant_test.txt").write_text("\n".join(lines) + "\n")
    elif dataset == "cars":
        from scipy.io import savemat

        folder = root / "stanford_cars"
        (folder / "cars_test").mkdir(parents=True)
        (folder / "devkit").mkdir()
        names = np.empty((1, 196), dtype=object)
        names[0, :] = list(shipped_classnames("cars"))
        savemat(folder / "devkit" / "cars_meta.mat", {"class_names": names})
        records = np.zeros((1, len(samples)), dtype=[("fname", object), ("class", object)])
        for i, (lab, _, a) in enumerate(samples):
            (folder / "cars_test" / f"{i + 1:05d}.jpg").write_bytes(png_bytes(a))
            records[0, i] = (f"{i + 1:05d}.jpg", np.uint8(lab + 1))
        savemat(folder / "cars_test_annos_withlabels.mat", {"annotations": records})
    elif dataset == "tinyimagenet":
        folder = root / "tiny-imagenet-200"
        (folder / "val" / "images").mkdir(parents=True)
        (folder / "wnids.txt").write_text("\n".join(tinyimagenet_wnids()) + "\n")
        wnids = sorted(tinyimagenet_wnids())
        lines = []
        for i, (lab, _, a) in enumerate(samples):
            (folder / "val" / "images" / f"val_{i}.JPEG").write_bytes(png_bytes(a))
            lines.append(f"val_{i}.JPEG\t{wnids[lab]}\t0\t0\t8\t8")
        (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    else:
        raise ValueError(f"no torchvision-layout writer for {dataset}")


def tinyimagenet_wnids() -> list[str]:
    """Five ImageNet wnids standing in for Tiny-ImageNet's 200 (written unsorted, as the real wnids.txt is)."""
    from grace_bench.data.imagenet_meta import imagenet_wnids

    return [imagenet_wnids()[i] for i in (900, 7, 450, 31, 2)]


def tinyimagenet_names() -> list[str]:
    """The class names of ``tinyimagenet_wnids`` in label (sorted wnid) order."""
    from grace_bench.data.imagenet_meta import wnid_to_index
    from grace_bench.data.zero_shot.prompts import shipped_classnames

    return [shipped_classnames("imagenet1k")[wnid_to_index()[w]] for w in sorted(tinyimagenet_wnids())]


def make_zero_shot_root(tmp_path: Path, layout: str, datasets: Sequence[str] = ("cifar10", "pets", "eurosat"),
                        n_per_class: int = 2, classes: Sequence[int] = (0, 1, 2), *, cifar_binary: bool = False,
                        prompt_files: bool = False) -> Path:
    """A data root under ``tmp_path`` holding ``datasets`` in ``layout`` (``wds`` or ``folders``); returns it.

    ``classes``: the labels that get images (``n_per_class`` each). ``prompt_files``: the shard folders also carry
    ``classnames.txt`` (the shipped names) and a one-line templates file, as CLIP_benchmark's do.
    """
    from grace_bench.data.zero_shot.catalog import BY_KEY
    from grace_bench.data.zero_shot.prompts import shipped_classnames

    root = tmp_path / f"zs-{layout}"
    root.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        samples = _samples(dataset, classes, n_per_class)
        if layout == "wds":
            folder = root / BY_KEY[dataset].wds_names[-1 if dataset == "imagenet1k" else 1]
            write_shards(folder, [(lab, a) for lab, _, a in samples])
            names = shipped_classnames(dataset)
            if names is None:  # no shipped list: the shards must carry it (CLIP_benchmark's always do)
                names = tinyimagenet_names() if dataset == "tinyimagenet" else [f"class {i}" for i in classes]
                (folder / "classnames.txt").write_text("\n".join(names) + "\n")
            if prompt_files:
                (folder / "classnames.txt").write_text("\n".join(names) + "\n")
                (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
        elif dataset in ("cifar10", "cifar100"):
            _cifar(root, dataset, samples, cifar_binary)
        elif dataset == "stl10":
            _stl10(root, samples)
        else:
            _files(root, dataset, samples)
    return root
