"""Class names and prompt templates of the zero-shot datasets: shipped lists, overridden by the dataset folder's.

Shipped (``grace_bench/data/resources/zero_shot_*.json``, sources in ``resources/ATTRIBUTION.md``): CLIP_benchmark
1.6.2's lists where it publishes one, OpenAI CLIP's ``data/prompts.md`` class names for the datasets whose
CLIP_benchmark names come from the data itself. Caltech-256 and Tiny-ImageNet ship no class names: they come from
the data (``classnames.txt`` of the shards, or the folder / wnid names of the torchvision layout).

A ``classnames.txt`` or ``zeroshot_classification_templates.txt`` in the dataset folder (CLIP_benchmark's shard
folders carry both) replaces the shipped list. Templates are written with ``{c}`` (CLIP_benchmark) or ``{}``; they
are returned as ``str.format`` strings with ``{}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from grace_bench.data.wds_shards import read_lines
from grace_bench.errors import UserError
from grace_bench.utils.hashing import text_list_hash

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
SHIPPED_CLASSNAMES = "zero_shot_classnames.json"
SHIPPED_TEMPLATES = "zero_shot_templates.json"


@dataclass(frozen=True)
class Prompts:
    """The class names and templates of one dataset, and where each came from (a file path or ``shipped``)."""

    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    classnames_source: str
    templates_source: str

    def record(self) -> dict[str, object]:
        """What a result file records: the sources, counts and hashes (``text_list_hash``, as eval's)."""
        return {"classnames": text_list_hash(self.classnames), "templates": text_list_hash(self.templates),
                "n_classes": len(self.classnames), "n_templates": len(self.templates),
                "classnames_source": self.classnames_source, "templates_source": self.templates_source}


@lru_cache(maxsize=2)
def _resource(name: str) -> dict:
    text = resources.files("grace_bench.data").joinpath("resources", name).read_text(encoding="utf-8")
    return json.loads(text)


def shipped_classnames(key: str) -> tuple[str, ...] | None:
    """The shipped class names of dataset ``key`` (None for datasets whose names come from the data)."""
    names = _resource(SHIPPED_CLASSNAMES)["classnames"].get(key)
    return None if names is None else tuple(names)


def shipped_templates(key: str) -> tuple[str, ...]:
    """The shipped templates of dataset ``key``, as ``str.format`` strings."""
    return tuple(format_template(t, SHIPPED_TEMPLATES) for t in _resource(SHIPPED_TEMPLATES)["templates"][key])


def shipped_sources() -> dict[str, dict[str, str]]:
    """Where each shipped list comes from: ``{"classnames": {key: source}, "templates": {key: source}}``."""
    return {"classnames": dict(_resource(SHIPPED_CLASSNAMES)["sources"]),
            "templates": dict(_resource(SHIPPED_TEMPLATES)["sources"])}


def format_template(template: str, where: str) -> str:
    """``template`` with CLIP_benchmark's ``{c}`` turned into ``{}``; a one-line ``UserError`` if it is unusable."""
    text = template.replace("{c}", "{}")
    try:
        filled = text.format("x")
    except (IndexError, KeyError, ValueError) as exc:
        raise UserError(f"template '{template[:60]}' in {where} is not a format string with one {{c}} or {{}} "
                        f"({type(exc).__name__}); fix that line") from exc
    if filled == text:
        raise UserError(f"template '{template[:60]}' in {where} has no {{c}} placeholder; add one where the "
                        "class name goes")
    return text


def dataset_prompts(key: str, folder: Path | None, data_classnames: tuple[str, ...] | None = None) -> Prompts:
    """The prompts of dataset ``key``: the folder's files beat the shipped lists, which beat ``data_classnames``
    (names read from the data, for datasets without a shipped list)."""
    names_file = folder / CLASSNAMES_FILE if folder is not None else None
    if names_file is not None and names_file.is_file():
        classnames, names_source = tuple(read_lines(names_file)), str(names_file)
        if not classnames:
            raise UserError(f"{key}: {names_file} is empty; write one class name per line, or delete it to use "
                            "the shipped list")
    elif (shipped := shipped_classnames(key)) is not None:
        classnames, names_source = shipped, "shipped"
    elif data_classnames:
        classnames, names_source = tuple(data_classnames), "data"
    else:
        where = f"{names_file}" if names_file is not None else f"the {key} dataset folder"
        raise UserError(f"{key}: no class names (grace-bench ships none for it); put {CLASSNAMES_FILE} in {where}, "
                        "one name per line in label order, as CLIP_benchmark's shards carry it")
    templates_file = folder / TEMPLATES_FILE if folder is not None else None
    if templates_file is not None and templates_file.is_file():
        lines = read_lines(templates_file)
        if not lines:
            raise UserError(f"{key}: {templates_file} is empty; write one template per line, or delete it to use "
                            "the shipped list")
        templates = tuple(format_template(t, str(templates_file)) for t in lines)
        templates_source = str(templates_file)
    else:
        templates, templates_source = shipped_templates(key), "shipped"
    return Prompts(classnames, templates, names_source, templates_source)
