"""Named evaluation protocols (``grace-bench eval --protocol NAME``): the settings each robust-CLIP paper reports.

A ``Protocol`` fixes the attack, the ε list, the images attacked per dataset, the datasets per suite, the prompt
templates and the seed. ``grace`` (the default) is grace-bench's own protocol and leaves every setting to the
suite, so it is exactly the behaviour without a preset. Every other preset cites, per setting, the line of the
paper's public code it comes from (``Source``). Explicit flags override a preset; the run is then recorded as
protocol ``custom`` with the preset it started from (``resolve_protocol``).

This module imports nothing heavy: ``grace-bench eval --protocol list`` prints ``protocols_text()`` without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grace_bench.errors import UserError
from grace_bench.registry import Registry

ALL = "all"  # images per dataset: the whole test split
# repository snapshots the sources below were read from
TECOA_REPO = "cvlab-columbia/ZSRobust4FoundationModel@1243db6600f213851c491c6290f1ec756db98fa4"
FARE_REPO = "chs20/RobustVLM@7de10ee209f169d415c07aa0abaae4806c402b14"
TGA_REPO = "zhyblue424/TGA-ZSR@663fe573dc9609893bb47b2d8303c034d9dd2ded"
PMG_REPO = ("serendipity1122/Pre-trained-Model-Guided-Fine-Tuning-for-Zero-Shot-Adversarial-Robustness"
            "@a53fdd8cda66c27c1e26b9da5f31ea462aa35656")
TECOA_TEMPLATE = ("This is a photo of a {}",)
# the zero-shot suite's 16 datasets, in the order the TGA-ZSR / PMG-AFT tables use
ZERO_SHOT_16 = ("tinyimagenet", "cifar10", "cifar100", "stl10", "food101", "pets", "flowers102", "dtd", "eurosat",
                "fgvc_aircraft", "caltech101", "caltech256", "cars", "pcam", "imagenet1k", "sun397")


@dataclass(frozen=True)
class Source:
    """Where a setting comes from: ``repo@commit``, a file and its line(s)."""

    setting: str
    repo: str
    path: str
    lines: str
    note: str = ""

    def text(self) -> str:
        return f"{self.setting}: {self.repo} {self.path}:{self.lines}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Protocol:
    """One named protocol. ``None`` settings take the suite's default (what runs without a preset).

    ``datasets`` / ``attacked`` map a suite name to the datasets evaluated / attacked there (a suite not named:
    every dataset / the suite's default: its ID set and the datasets marked ``attacked``). ``n_adv`` is the images
    attacked per dataset (``"all"``: the whole split), ``n_adv_for`` per-dataset exceptions, ``subset_ids``
    whether the suite's fixed adversarial ids (RobustBench's 5000 ImageNet ids) are used for its ID dataset.
    """

    name: str
    title: str
    paper: str
    attack: str | None = None
    eps: tuple[str, ...] | None = None
    n_adv: int | str | None = None
    n_adv_for: Mapping[str, int] = field(default_factory=dict)
    datasets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    attacked: Mapping[str, tuple[str, ...] | str] = field(default_factory=dict)
    templates: tuple[str, ...] | None = None
    seed: int = 0
    subset_ids: bool = True
    zero_shot: bool = False  # the papers' zero-shot table (clean and robust per dataset, averages)
    sources: tuple[Source, ...] = ()
    notes: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        """Every setting as JSON (what results record)."""
        return {"attack": self.attack, "eps": list(self.eps) if self.eps else None, "n_adv": self.n_adv,
                "n_adv_for": dict(self.n_adv_for), "datasets": {k: list(v) for k, v in self.datasets.items()},
                "attacked": {k: (v if isinstance(v, str) else list(v)) for k, v in self.attacked.items()},
                "templates": list(self.templates) if self.templates else None, "seed": self.seed,
                "subset_ids": self.subset_ids}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "paper": self.paper, "settings": self.settings(),
                "sources": [s.text() for s in self.sources], "notes": list(self.notes)}


GRACE = Protocol(
    name="grace", title="GRACE (grace-bench default)", paper="GRACE",
    notes=("every setting is the suite's: micro APGD-CE 1x100 at 4/255 on 250 images of micro; imagenet APGD-CE 1x100 "
           "at 4/255 on RobustBench's 5000 ImageNet val ids; the ID set is attacked (zero-shot suites: the datasets "
           "marked attacked), the suite's templates",),
)

_TECOA_SOURCES = (
    Source("eps 1/255", TGA_REPO, "TGA-ZSR.py", "48,118", "--test_eps 1 of the TeCoA re-evaluation (main.sh:20); "
           "TeCoA's finetuning.py:70 defaults to 2, its README.md:58-59 trains at eps=1"),
    Source("step 1/255", TECOA_REPO, "finetuning.py", "73,203", "--test_stepsize 1, divided by 255"),
    Source("PGD, uniform random start, CE, 1 restart", TECOA_REPO, "finetuning.py", "656-696", "attack_pgd"),
    Source("100 steps", TGA_REPO, "TGA-ZSR.py", "49", "--test_numsteps 100 of the TeCoA re-evaluation (main.sh:20); "
           "TeCoA's own finetuning.py:72 defaults to 5"),
    Source("template 'This is a photo of a {}'", TECOA_REPO, "finetuning.py", "304,461,478"),
    Source("full test split of every dataset", TECOA_REPO, "finetuning.py", "359-362,915", "split='test', "
           "every batch under --evaluate"),
    Source("seed 0", TECOA_REPO, "finetuning.py", "98"),
)
TECOA = Protocol(
    name="tecoa", title="TeCoA (ICLR 2023) zero-shot robustness", paper="Mao et al. 2023, arXiv:2212.07016",
    attack="pgd[steps=100,step=1/255]", eps=("1/255",), n_adv=ALL,
    datasets={"zeroshot": ("cifar10", "cifar100", "stl10", "sun397", "cars", "food101", "pets", "flowers102", "dtd",
                           "eurosat", "fgvc_aircraft", "pcam", "imagenet1k", "caltech101", "caltech256")},
    attacked={"zeroshot": ALL, "micro": ALL, "imagenet": ALL}, templates=TECOA_TEMPLATE, subset_ids=False,
    zero_shot=True, sources=_TECOA_SOURCES,
    notes=("TeCoA's evaluation list (finetuning.py:359-362) also has Country211 and HatefulMemes, which the zeroshot "
           "suite does not hold", "class names: the suite's (CLIP_benchmark's); TeCoA uses torchvision's",
           "clean accuracy in TeCoA's code runs under fp16 autocast; grace-bench's clean pass is fp32 unless "
           "--precision bf16"),
)

_FARE_AA = "custom:apgd-ce[restarts=5,iters=100],apgd-t[restarts=1,iters=100,targets=9]"
FARE = Protocol(
    name="fare", title="FARE (ICML 2024) / RobustBench-style zero-shot robustness",
    paper="Schlarmann et al. 2024, arXiv:2402.12336",
    attack=_FARE_AA, eps=("2/255", "4/255"), n_adv=1000, n_adv_for={"imagenet": 5000, "imagenet1k": 5000},
    datasets={"zeroshot": ("cifar10", "stl10", "cifar100", "cars", "caltech101", "pets", "flowers102", "dtd",
                           "eurosat", "fgvc_aircraft", "pcam", "imagenet1k"),
              "imagenet": ("imagenet", "imagenet-r", "imagenet-sketch")},
    attacked={"zeroshot": ALL, "micro": ALL, "imagenet": ALL}, zero_shot=True,
    sources=(
        Source("APGD-CE then APGD-T (AutoAttack version='custom'; APGD-CE only on 2-class sets)", FARE_REPO,
               "CLIP_benchmark/clip_benchmark/metrics/zeroshot_classification.py", "129-134"),
        Source("APGD-CE 5 restarts, APGD-T 1 restart, 100 iterations, 9 target classes", FARE_REPO,
               "autoattack/autoattack.py", "34,47", "constructor defaults; set_version is not called for "
               "'custom'; 9 targets: APGDAttack_targeted's default"),
        Source("eps 2/255 and 4/255", FARE_REPO, "CLIP_benchmark/bash/run_benchmark_adv.sh", "6",
               "EPS=2 (README.md:138,196 report 2/255 and 4/255)"),
        Source("1000 images per zero-shot dataset (the first ones)", FARE_REPO,
               "CLIP_benchmark/bash/run_benchmark_adv.sh", "8,15", "SAMPLES=1000, batch size 50"),
        Source("5000 ImageNet images (RobustBench's subset)", FARE_REPO, "CLIP_eval/clip_robustbench.py", "34,103,294",
               "--n_samples_imagenet 5000, load_clean_dataset"),
        Source("datasets", FARE_REPO, "CLIP_benchmark/benchmark/datasets.txt", "1-13"),
        Source("templates: CLIP_benchmark's per dataset; ImageNet: the OpenAI ensemble", FARE_REPO,
               "CLIP_eval/clip_robustbench.py", "210-212"),
        Source("seed 0", FARE_REPO, "CLIP_eval/clip_robustbench.py", "83", "torch.manual_seed(0); the zero-shot "
               "AutoAttack runs with seed=None (time-based); grace-bench seeds every chunk"),
    ),
    notes=("FARE's dataset list also has ImageNet-R and ImageNet-Sketch (CLIP_benchmark); they live in the imagenet "
           "suite here, where the preset runs ImageNet (RobustBench's 5000 ids), ImageNet-R and ImageNet-Sketch",
           "on the zeroshot suite imagenet1k is attacked on its first 5000 images unless the suite "
           "supplies RobustBench's ids"),
)

TGA_ZSR = Protocol(
    name="tga-zsr", title="TGA-ZSR (NeurIPS 2024) zero-shot robustness", paper="Yu et al. 2024, arXiv:2410.21802",
    attack="pgd[steps=100,step=1/255]", eps=("1/255",), n_adv=ALL,
    datasets={"zeroshot": ZERO_SHOT_16}, attacked={"zeroshot": ALL, "micro": ALL, "imagenet": ALL},
    templates=TECOA_TEMPLATE, subset_ids=False, zero_shot=True,
    sources=(
        Source("eps 1/255, 100 steps of 1/255", TGA_REPO, "TGA-ZSR.py", "48-50,118-120"),
        Source("PGD, uniform random start, CE", TGA_REPO, "attacks.py", "63-93"),
        Source("template 'This is a photo of a {}'", TGA_REPO, "TGA-ZSR.py", "196"),
        Source("16 datasets", TGA_REPO, "TGA-ZSR.py", "205-206"),
        Source("seed 0", TGA_REPO, "TGA-ZSR.py", "70,130"),
    ),
)

PMG_AFT = Protocol(
    name="pmg-aft", title="PMG-AFT (CVPR 2024) zero-shot robustness, as in its code",
    paper="Wang et al. 2024, arXiv:2401.04350",
    attack="pgd[steps=10,step=1/255]", eps=("1/255",), n_adv=ALL,
    datasets={"zeroshot": ("cifar10", "cifar100", "stl10", "sun397", "food101", "pets", "flowers102", "dtd",
                           "eurosat", "fgvc_aircraft", "tinyimagenet", "imagenet1k", "caltech101", "caltech256",
                           "cars", "pcam")},
    attacked={"zeroshot": ALL, "micro": ALL, "imagenet": ALL}, templates=TECOA_TEMPLATE, subset_ids=False,
    zero_shot=True,
    sources=(
        Source("eps 1/255, 10 steps of 1/255", PMG_REPO, "PMG_AFT.py", "50-52", "the code's test defaults"),
        Source("template 'This is a photo of a {}'", PMG_REPO, "PMG_AFT.py", "242"),
        Source("16 datasets", PMG_REPO, "PMG_AFT.py", "294-296,299-301"),
        Source("seed 0", PMG_REPO, "PMG_AFT.py", "74"),
    ),
    notes=("the step count is the code's default (10); the paper's text was not checked here: for PGD-100 use "
           "--protocol tga-zsr, which re-evaluates PMG-AFT at 100 steps",),
)

PROTOCOLS: Registry[Protocol] = Registry("protocol")
for _p in (GRACE, TECOA, FARE, TGA_ZSR, PMG_AFT):
    PROTOCOLS.register(_p.name, _p)
DEFAULT_PROTOCOL = "grace"
CUSTOM = "custom"


def get_protocol(name: str) -> Protocol:
    """The preset called ``name`` (a one-line UserError listing the known ones otherwise)."""
    return PROTOCOLS.get(name)


def parse_eps_list(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"2/255,4/255"`` -> ``("2/255", "4/255")`` (each checked later by ``parse_eps``); None stays None."""
    if text is None:
        return None
    items = [str(e).strip() for e in (text.split(",") if isinstance(text, str) else text)]
    if not items or any(not e for e in items):
        raise UserError(f"eps (--eps) {text!r} has an empty entry; write e.g. 4/255 or 2/255,4/255")
    if len(set(items)) != len(items):
        raise UserError(f"eps (--eps) {text!r} lists an ε twice; give each once")
    return tuple(items)


# settings that change a clean result (the rest only change the adversarial results)
CLEAN_SETTINGS = ("templates", "classnames")


@dataclass(frozen=True)
class ResolvedProtocol:
    """The preset a run (or one result) uses after flags: ``name`` is the preset's or ``custom``.

    ``overrides`` are the settings given that differ from the preset's; ``preset_eps`` the preset's ε list
    (canonical). ``for_result`` narrows a run to one result, so a result file identical to the preset's own
    carries the preset's name and tag whichever run wrote it.
    """

    name: str
    based_on: str
    overrides: tuple[str, ...]
    preset: Protocol
    preset_eps: tuple[str, ...] = ()

    @property
    def tag(self) -> str | None:
        """What result hashes add (None for grace and custom-from-grace: today's results keep their names)."""
        if self.based_on == DEFAULT_PROTOCOL:
            return None
        return self.name if self.name != CUSTOM else f"{CUSTOM}:{self.based_on}"

    @property
    def family(self) -> str:
        """The summary / leaderboard group: ``grace``, ``tecoa``, ``custom-tecoa``..."""
        return self.based_on if self.name != CUSTOM or self.based_on == DEFAULT_PROTOCOL else f"custom-{self.based_on}"

    def for_result(self, kind: str, eps: str | None = None) -> ResolvedProtocol:
        """The protocol of one result: a clean result depends on the prompts only, an adversarial one on its own ε."""
        keep = [k for k in self.overrides if k in CLEAN_SETTINGS or (kind != "clean" and k != "eps")]
        if kind != "clean" and eps is not None and eps not in self.preset_eps:
            keep.append("eps")
        return ResolvedProtocol(CUSTOM if keep else self.preset.name, self.based_on, tuple(keep), self.preset,
                                self.preset_eps)

    def record(self, effective: Mapping[str, Any]) -> dict[str, Any]:
        """What each result records: the name, the preset, the overridden settings and every effective setting."""
        return {"name": self.name, "based_on": self.based_on, "overrides": list(self.overrides),
                "settings": dict(effective), "sources": [s.text() for s in self.preset.sources]}


def resolve_protocol(name: str | None, given: Mapping[str, Any], preset_values: Mapping[str, Any]) -> ResolvedProtocol:
    """``custom`` when a given (non-None) flag differs from the preset's value, else the preset itself."""
    preset = get_protocol(name or DEFAULT_PROTOCOL)
    overrides = tuple(k for k, v in given.items() if v is not None and v != preset_values.get(k))
    return ResolvedProtocol(CUSTOM if overrides else preset.name, preset.name, overrides, preset,
                            tuple(preset_values.get("eps") or ()))


def protocols_text() -> str:
    """``--protocol list``: every preset, its settings and its sources."""
    lines = []
    for name in PROTOCOLS.names():
        p = get_protocol(name)
        lines.append(f"{p.name}: {p.title} [{p.paper}]")
        for key, value in p.settings().items():
            if value not in (None, {}, []):
                lines.append(f"  {key}: {value}")
        if p.attack is None:
            lines.append("  attack, eps, n_adv, templates: the suite's defaults")
        lines += [f"  source {s.text()}" for s in p.sources]
        lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)


def protocols_markdown() -> str:
    """The presets against the papers (docs/protocols.md, regenerated by ``python -m grace_bench.docs``)."""
    rows = ["| preset | paper | attack | ε (ℓ∞) | images per dataset | datasets (other suites: all) | templates "
            "| seed |",
            "|---|---|---|---|---|---|---|---|"]
    for name in PROTOCOLS.names():
        p = get_protocol(name)
        n = "suite default" if p.n_adv is None else ("full test split" if p.n_adv == ALL else str(p.n_adv))
        n += "".join(f"; {d}: {k}" for d, k in p.n_adv_for.items())
        datasets = "; ".join(f"`{suite}`: {', '.join(names)}" for suite, names in p.datasets.items()) or "all"
        templates = " / ".join(f"'{t}'" for t in p.templates) if p.templates else "the suite's"
        rows.append(f"| `{p.name}` | {p.paper} | `{p.attack or 'suite default'}` | "
                    f"{', '.join(p.eps) if p.eps else 'suite default'} | {n} | {datasets} | {templates} | {p.seed} |")
    rows += ["", "| preset | setting | source (repository@commit file:line) |", "|---|---|---|"]
    for name in PROTOCOLS.names():
        p = get_protocol(name)
        for s in p.sources:
            note = f" ({s.note})" if s.note else ""
            rows.append(f"| `{p.name}` | {s.setting} | {s.repo} `{s.path}:{s.lines}`{note} |")
        for note in p.notes:
            rows.append(f"| `{p.name}` | note | {note} |")
    return "\n".join(rows)
