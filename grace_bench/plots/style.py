"""The one figure style: a seaborn theme, a colour-blind-safe palette with fixed method colours,
protocol titles, and atomic PNG/PDF saving.

Figures are built as ``matplotlib.figure.Figure`` objects (no pyplot), so no global state is touched and
saving always uses the Agg/PDF canvases, whatever backend the caller has.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib as mpl
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from grace_bench.attacks.naming import describe_attack, is_no_attack
from grace_bench.attacks.threat import describe_eps
from grace_bench.errors import UserError
from grace_bench.utils.atomic import atomic_path

# Known methods keep the same colour (index into seaborn's "colorblind" palette) and marker in every figure.
METHOD_STYLE: dict[str, tuple[int, str]] = {
    "zero-shot": (7, "o"),
    "ft": (0, "s"),
    "wise-ft": (9, "D"),
    "flyp": (2, "^"),
    "tecoa": (4, "v"),
    "fare": (5, "P"),
    "pmg-aft": (6, "X"),
    "grace": (3, "*"),
    "sim-clip": (5, "<"),  # FARE's colour: a FARE variant
    "advclip-lora": (1, ">"),  # LoRA-TeCoA's colour: adversarial CE with LoRA
    "laat": (4, "d"),  # TeCoA's colour: adversarial CE against a text head
    "lora-ft": (8, "h"),
    "lora-tecoa": (1, "p"),
    "tga-zsr": (4, "<"),
    "agft": (5, ">"),
}
METHOD_ORDER = tuple(METHOD_STYLE)
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "p", "<", ">")
FORMATS = ("png", "pdf")
DPI = 150


def palette(n: int = 10) -> list[tuple[float, float, float]]:
    """The colour-blind-safe palette used everywhere."""
    return sns.color_palette("colorblind", n)


def style_rc() -> dict[str, Any]:
    """rcParams of the grace-bench style (seaborn whitegrid + paper context, colour-blind cycle)."""
    rc: dict[str, Any] = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("paper", font_scale=1.15))
    rc.update(
        {
            "axes.prop_cycle": mpl.cycler(color=palette()),
            "figure.dpi": 100,
            "savefig.dpi": DPI,
            "image.cmap": "viridis",
            "legend.frameon": False,
            "axes.titlesize": 11,
            "figure.titlesize": 12,
            "pdf.fonttype": 42,
        }
    )
    return rc


@contextmanager
def figure_style() -> Iterator[None]:
    """Apply the grace-bench style for the duration of the block (restores the caller's rcParams)."""
    with mpl.rc_context(style_rc()):
        yield


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None, **kw: Any):
    """A constrained-layout ``Figure`` and its axes (``squeeze=False`` unless one axes is asked for)."""
    width, height = size or (4.6 * ncols + 0.6, 3.6 * nrows + 0.6)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=(nrows == ncols == 1), **kw)
    return fig, axes


def method_key(label: str) -> str | None:
    """The known method a label belongs to (longest matching prefix, case-insensitive), or None."""
    low = label.lower().replace("_", "-").replace(" ", "-")
    best = None
    for name in METHOD_ORDER:
        if low == name or low.startswith(name + "-") or low.startswith(name + "("):
            if best is None or len(name) > len(best):
                best = name
    if best is None and low in ("zeroshot", "zs", "zero-shot-clip"):
        best = "zero-shot"
    return best


def method_styles(labels: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{label: {"color", "marker"}}``: fixed styles for known methods, unused palette slots for the rest."""
    labels = list(dict.fromkeys(labels))
    colours = palette(10)
    styles: dict[str, dict[str, Any]] = {}
    used: set[int] = set()
    claimed: set[str] = set()
    # Exact names first, then prefixed variants ("wise-ft a=0.5"); a method's style goes to one label only,
    # so "grace" and "grace-gv-only" in one figure stay distinguishable.
    ranked = sorted(labels, key=lambda lab: method_key(lab) != lab.lower())
    for label in ranked:
        key = method_key(label)
        if key is not None and key not in claimed:
            slot, marker = METHOD_STYLE[key]
            styles[label] = {"color": colours[slot], "marker": marker}
            used.add(slot)
            claimed.add(key)
    free = [i for i in range(len(colours)) if i not in used] or list(range(len(colours)))
    j = 0
    for label in labels:
        if label not in styles:
            styles[label] = {"color": colours[free[j % len(free)]], "marker": MARKERS[j % len(MARKERS)]}
            j += 1
    return styles


_NORMS = {"linf": "ℓ∞", "l_inf": "ℓ∞", "inf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}
# (protocol key candidates, renderer) in title order.
_TITLE_FIELDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("attack_label", "attack"), "{}"),
    (("norm",), "{}"),
    (("eps", "epsilon"), "ε={}"),
    (("n_adv",), "n_adv={}"),
    (("dataset", "datasets"), "data: {}"),
    (("suite",), "suite: {}"),
    (("n", "n_samples", "num_samples"), "n={}"),
    (("params", "param_group"), "params: {}"),
    (("seed",), "seed {}"),
)


def _find_key(obj: Any, keys: Sequence[str]) -> Any:
    """First value of any of ``keys`` in a (nested) mapping, breadth-first."""
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if not isinstance(cur, Mapping):
            continue
        for k in keys:
            if k in cur and cur[k] is not None and not isinstance(cur[k], Mapping):
                return cur[k]
        queue.extend(v for v in cur.values() if isinstance(v, Mapping))
    return None


# Fields that describe a threat model: left out of a protocol whose attack is ``none``.
_THREAT_KEYS = ("norm", "eps", "n_adv")


def _render_value(key: str, value: Any) -> str:
    if key == "attack_label":  # a recorded label reads as is; an attack spec is spelled out (APGD-CE 1×100)
        return describe_attack(str(value), short=True)
    if key in ("eps", "epsilon"):
        return describe_eps(value) or str(value)
    if key == "norm":
        return _NORMS.get(str(value).lower(), str(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def protocol_text(protocols: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> str:
    """One line stating the protocol (attack, norm, ε, n, dataset/suite, seed) found in ``protocols``.

    The attack reads as recorded (``attack_label`` when given, else described from ``attack``, e.g.
    ``APGD-CE 1×100``); a protocol whose attack is ``none`` reads ``no attack`` and states no threat model.

    With several protocols, a field whose values differ is shown as ``{a | b} (mixed)``, and one that only
    some of them record is marked ``(some)``.
    """
    if protocols is None:
        return ""
    if isinstance(protocols, Mapping):
        protocols = [protocols]
    parts = []
    no_attack = [is_no_attack(_find_key(proto, ("attack",))) for proto in protocols]
    for keys, fmt in _TITLE_FIELDS:
        values, present = [], 0
        for proto, nothing_ran in zip(protocols, no_attack):
            if nothing_ran and keys[0] in _THREAT_KEYS:
                continue
            v = _find_key(proto, keys)
            if v is not None:
                present += 1
                text = _render_value(keys[0], v)
                if text not in values:
                    values.append(text)
        if not values:
            continue
        if len(values) == 1:
            part = fmt.format(values[0])
        else:
            part = fmt.format("{" + " | ".join(values) + "}") + " (mixed)"
        parts.append(part + (" (some)" if present < len(protocols) else ""))
    return " · ".join(parts)


def set_title(fig: Figure, title: str, protocols: Any = None) -> str:
    """Figure title: ``title`` plus a second line with the protocol; returns the full text."""
    proto = protocol_text(protocols)
    text = f"{title}\n{proto}" if proto else title
    fig.suptitle(text)
    return text


def percent_formatter(decimals: int | None = None) -> PercentFormatter:
    """Tick formatter for fractions in [0,1] shown as percent (no % sign: axis labels say "(%)").

    ``decimals=None`` picks as many decimals as the axis range needs, so close ticks stay distinct.
    """
    return PercentFormatter(xmax=1.0, decimals=decimals, symbol="")


def short_layer_names(names: Sequence[str]) -> list[str]:
    """Drop the dotted prefix shared by all names (``visual.transformer.resblocks.3.attn`` -> ``3.attn``)."""
    names = [str(n) for n in names]
    if len(names) < 2:
        return names
    split = [n.split(".") for n in names]
    common = 0
    while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
        common += 1
    return [".".join(s[common:]) for s in split]


def save_figure(fig: Figure, stem: str | os.PathLike | None, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` to ``stem.<fmt>`` for each format, atomically; returns the paths (none if ``stem`` is None).

    PDF creation dates and the PNG software tag are dropped, so the same data gives the same bytes.
    """
    if stem is None:
        return []
    stem = Path(stem)
    written = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        if fmt not in ("png", "pdf", "svg"):
            raise UserError(f"unknown figure format '{fmt}'; use png, pdf or svg")
        path = stem.with_name(stem.name + "." + fmt)
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None} if fmt == "png" else {"Date": None}
        with figure_style(), atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
        written.append(path)
    return written
