"""Threat-model parsing: perturbation budgets (``"4/255"``), norms and attack specs.

Attack spec grammar (the ``--attack`` flag)::

    none | pgd[steps=N,step=a/b] | apgd-ce[...] | aa-standard | aa-plus | aa-rand
    | custom:<attack>[key=value,...],<attack>[...],...

``<attack>`` is one of pyautoattack's names (``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``,
``square``). Optional sub-attack settings in brackets: ``restarts``, ``iters`` (alias ``iterations``),
``targets`` (target classes), ``queries`` (Square) and ``eot`` (EOT iterations). Inside brackets ``,`` or
``;`` separate settings, e.g. ``custom:apgd-ce[restarts=1,iters=50],apgd-t[targets=3]``.

One semantics everywhere: a setting left out takes AutoAttack *standard*'s value for that sub-attack
(``SUBATTACK_DEFAULTS``: 1 restart, 100 iterations, 9 target classes, 5000 Square queries), so a bare
``apgd-ce`` is ``apgd-ce[restarts=1,iters=100]``, the default attack. The canonical name (``AttackSpec.name``,
what results record) spells every setting out, e.g. ``custom:apgd-ce[restarts=1,iters=100],apgd-t[restarts=1,
iters=100,targets=9]``; ``eot`` is shown only when it is not 1. ``aa-standard``/``aa-plus``/``aa-rand`` keep
pyautoattack's per-version settings (``VERSION_SETTINGS``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from grace_bench.errors import UserError
from grace_bench.registry import Registry
from grace_bench.utils.parsing import parse_number

NORMS = ("Linf", "L2")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
AA_VERSIONS = {"aa-standard": "standard", "aa-plus": "plus", "aa-rand": "rand"}
ATTACK_KINDS = ("none", "pgd", "apgd-ce", "aa-standard", "aa-plus", "aa-rand", "custom:<list>")

# Settings each sub-attack accepts (fab-t always runs 1 restart in pyautoattack, so no ``restarts``).
AA_SETTING_KEYS: dict[str, tuple[str, ...]] = {
    "apgd-ce": ("restarts", "iterations", "eot"),
    "apgd-dlr": ("restarts", "iterations", "eot"),
    "apgd-t": ("restarts", "iterations", "targets", "eot"),
    "fab": ("restarts", "iterations"),
    "fab-t": ("iterations", "targets"),
    "square": ("restarts", "queries"),
}
PGD_SETTING_KEYS = ("steps", "step")
PGD_STEPS = 10
PGD_STEP_SIZE = "1/255"
# What a sub-attack runs with when a setting is left out: AutoAttack standard's values (apgd-dlr and fab,
# which standard does not run, get the same restarts and iterations as apgd-ce).
SUBATTACK_DEFAULTS: dict[str, dict[str, int]] = {
    "apgd-ce": {"restarts": 1, "iterations": 100, "eot": 1},
    "apgd-dlr": {"restarts": 1, "iterations": 100, "eot": 1},
    "apgd-t": {"restarts": 1, "iterations": 100, "targets": 9, "eot": 1},
    "fab": {"restarts": 1, "iterations": 100},
    "fab-t": {"iterations": 100, "targets": 9},
    "square": {"restarts": 1, "queries": 5000},
}
# pyautoattack's settings per version (l-inf / l2), as build_autoattack reads them back from its objects.
VERSION_SETTINGS: dict[str, dict[str, dict[str, int]]] = {
    "standard": {"apgd-ce": SUBATTACK_DEFAULTS["apgd-ce"], "apgd-t": SUBATTACK_DEFAULTS["apgd-t"],
                 "fab-t": SUBATTACK_DEFAULTS["fab-t"], "square": SUBATTACK_DEFAULTS["square"]},
    "plus": {"apgd-ce": {"restarts": 5, "iterations": 100, "eot": 1},
             "apgd-dlr": {"restarts": 5, "iterations": 100, "eot": 1},
             "fab": {"restarts": 5, "iterations": 100}, "square": {"restarts": 1, "queries": 5000},
             "apgd-t": {"restarts": 1, "iterations": 100, "targets": 9, "eot": 1},
             "fab-t": {"iterations": 100, "targets": 9}},
    "rand": {"apgd-ce": {"restarts": 1, "iterations": 100, "eot": 20},
             "apgd-dlr": {"restarts": 1, "iterations": 100, "eot": 20}},
}
# ``AttackSpec.kind`` -> the ``Attack`` class that runs it (``grace_bench.attacks.loop``); each has
# ``from_spec(spec, model, x, *, eps, norm, seed, chunk_size, device)``. A new attack kind is one line here.
ATTACKS: Registry[type] = Registry("attack", {
    "pgd": "grace_bench.attacks.pgd_eval:PGDAttack",
    "autoattack": "grace_bench.attacks.autoattack:AutoAttackCascade",
})
_KEY_ALIASES = {"iters": "iterations"}
_SHOWN_KEY = {"iterations": "iters"}

_NUMBER = re.compile(r"^\s*[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?\s*$")


def parse_fraction(value: str | float | int) -> float:
    """A float from a number or a fraction string such as ``"4/255"``; ValueError otherwise
    (``grace_bench.utils.parsing.parse_number``, kept under this name for the attack code)."""
    return parse_number(value)


def parse_eps(value: str | float | int) -> float:
    """``"4/255"``, ``"0.0157"``, ``"0"`` or a number -> a finite float >= 0."""
    bad = UserError(f"invalid eps {value!r}; write a number or a fraction such as 4/255")
    if isinstance(value, str) and not all(_NUMBER.match(part) for part in value.strip().split("/", 1)):
        raise bad
    try:
        eps = parse_fraction(value)
    except ValueError:
        raise bad from None
    if not math.isfinite(eps) or eps < 0:
        raise UserError(f"invalid eps {value!r}; it must be a finite number >= 0, e.g. 4/255")
    return eps


def format_eps(eps: float | str) -> str:
    """Canonical fraction string: ``4/255`` when eps is a multiple of 1/255 (to 1e-9), else ``repr``.

    Attack configs (and so result hashes) record this form; ``describe_eps`` is the display form for tables.
    """
    value = parse_eps(eps)
    k = value * 255
    if abs(k - round(k)) < 1e-9 * max(1.0, abs(k)):
        return "0" if round(k) == 0 else f"{round(k)}/255"
    return repr(value)


def describe_eps(eps: Any) -> str | None:
    """ε as tables show it: ``4/255`` for multiples of 1/255, a small exact fraction (``1/4``) or ``%g`` otherwise;
    ``None`` stays ``None`` and a value that is not an ε is shown as recorded (readers never fail on it)."""
    if eps is None:
        return None
    try:
        value = parse_eps(eps)
    except UserError:
        return str(eps).strip()
    canonical = format_eps(value)
    if "/" in canonical or canonical == "0":
        return canonical
    frac = Fraction(value).limit_denominator(1000)
    if frac.denominator > 1 and abs(float(frac) - value) < 1e-12:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{value:g}"


def parse_norm(norm: str) -> str:
    """Case-insensitive ``linf``/``inf``/``l2`` -> ``"Linf"`` or ``"L2"``."""
    key = str(norm).strip().lower()
    if key in ("linf", "inf", "l_inf", "l-inf"):
        return "Linf"
    if key in ("l2", "2"):
        return "L2"
    raise UserError(f"unknown norm {norm!r}; use one of: {', '.join(NORMS)}")


def check_eps_for_norm(eps: float, norm: str) -> None:
    """An l-inf budget above 1 cannot be meant in [0,1] pixel space."""
    if parse_norm(norm) == "Linf" and eps > 1:
        raise UserError(f"eps {eps:g} exceeds 1 for Linf in [0,1] pixel space; write it as a fraction, e.g. 4/255")


@dataclass(frozen=True)
class AttackSpec:
    """A parsed ``--attack`` value.

    ``kind`` is ``none``, ``pgd`` or ``autoattack``; ``version`` is pyautoattack's version (``standard``,
    ``plus``, ``rand`` or ``custom``); ``attacks`` the explicit attack list (custom only) and ``settings``
    per-attack overrides as sorted ``(attack, ((key, value), ...))`` tuples.
    """

    name: str
    kind: str
    version: str | None = None
    attacks: tuple[str, ...] = ()
    settings: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def settings_dict(self) -> dict[str, dict[str, str]]:
        """Overrides as ``{attack: {key: value}}`` (values are strings as written)."""
        return {attack: dict(items) for attack, items in self.settings}

    def __str__(self) -> str:
        return self.name


def parse_attack_spec(spec: str) -> AttackSpec:
    """Parse an ``--attack`` string (see the module docstring) into an ``AttackSpec``."""
    text = str(spec).strip()
    low = text.lower()
    usage = f"choose one of: {', '.join(ATTACK_KINDS)}"
    if low == "none":
        return AttackSpec(name="none", kind="none")
    if low in AA_VERSIONS:
        return AttackSpec(name=low, kind="autoattack", version=AA_VERSIONS[low])
    if low.startswith("pgd"):
        name, settings = _parse_item(text, usage)
        if name != "pgd":
            raise UserError(f"unknown attack {spec!r}; {usage}")
        _check_keys("pgd", settings, PGD_SETTING_KEYS)
        full = {"steps": str(_parse_count(settings.get("steps", str(PGD_STEPS)), "pgd", "steps", minimum=0)),
                "step": format_eps(settings.get("step", PGD_STEP_SIZE))}
        return AttackSpec(name=_canonical("pgd", full), kind="pgd", settings=_freeze({"pgd": full}))
    if low.startswith("custom:"):
        body = text.split(":", 1)[1]
        items = _split_top_level(body)
        if not items or any(not item.strip() for item in items):
            raise UserError(f"empty attack list in {spec!r}; write e.g. custom:apgd-ce,apgd-t")
        return _custom_spec([_parse_item(item, usage) for item in items], prefix="custom:")
    if low.startswith("apgd-ce"):
        item = _parse_item(text, usage)
        if item[0] == "apgd-ce":
            return _custom_spec([item], prefix="")
    raise UserError(f"unknown attack {spec!r}; {usage}")


def _custom_spec(items: list[tuple[str, dict[str, str]]], prefix: str) -> AttackSpec:
    attacks: list[str] = []
    overrides: dict[str, dict[str, str]] = {}
    for name, settings in items:
        if name not in AA_ATTACKS:
            raise UserError(f"unknown AutoAttack attack {name!r}; choose from: {', '.join(AA_ATTACKS)}")
        if name in attacks:
            raise UserError(f"attack {name!r} is listed twice; list each AutoAttack attack once")
        _check_keys(name, settings, AA_SETTING_KEYS[name])
        full = {key: str(_parse_count(value, name, key, minimum=1)) for key, value in settings.items()}
        attacks.append(name)
        overrides[name] = {k: full.get(k, str(v)) for k, v in SUBATTACK_DEFAULTS[name].items()}
    name = prefix + ",".join(_canonical(a, overrides.get(a, {})) for a in attacks)
    return AttackSpec(name=name, kind="autoattack", version="custom", attacks=tuple(attacks),
                      settings=_freeze(overrides))


def _parse_item(item: str, usage: str) -> tuple[str, dict[str, str]]:
    item = item.strip()
    match = re.fullmatch(r"([A-Za-z0-9_-]+)\s*(?:\[(.*)\])?", item)
    if match is None:
        raise UserError(f"cannot parse attack {item!r}; {usage}")
    name, body = match.group(1).lower(), match.group(2)
    settings: dict[str, str] = {}
    if body is not None:
        for part in re.split(r"[;,]", body):
            if not part.strip():
                continue
            if "=" not in part:
                raise UserError(f"setting {part.strip()!r} of {name!r} needs key=value, e.g. {name}[restarts=1]")
            key, value = (s.strip() for s in part.split("=", 1))
            key = _KEY_ALIASES.get(key.lower(), key.lower())
            if key in settings:
                raise UserError(f"setting {key!r} of {name!r} is given twice; give it once")
            settings[key] = value
    return name, settings


def _split_top_level(body: str) -> list[str]:
    items, depth, current = [], 0, []
    for ch in body:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    if depth != 0:
        raise UserError(f"unbalanced brackets in {body!r}; write e.g. custom:apgd-ce[restarts=1],apgd-t")
    return items


def _check_keys(name: str, settings: dict[str, str], allowed: tuple[str, ...]) -> None:
    for key in settings:
        if key not in allowed:
            raise UserError(f"{name!r} has no setting {key!r}; allowed: {', '.join(allowed)}")


def _parse_count(value: str, name: str, key: str, *, minimum: int) -> int:
    try:
        count = int(value)
    except ValueError:
        raise UserError(f"setting {key}={value!r} of {name!r} must be an integer") from None
    if count < minimum:
        raise UserError(f"setting {key}={value!r} of {name!r} must be >= {minimum}")
    return count


def _canonical(name: str, settings: dict[str, str]) -> str:
    """``name[k=v,...]`` with the keys in their fixed order (``eot=1`` left out)."""
    order = PGD_SETTING_KEYS if name == "pgd" else AA_SETTING_KEYS[name]
    shown = [f"{_SHOWN_KEY.get(k, k)}={settings[k]}" for k in order
             if k in settings and not (k == "eot" and str(settings[k]) == "1")]
    return f"{name}[" + ",".join(shown) + "]" if shown else name


def canonical_attack(spec: str) -> str:
    """The canonical, explicit name of an ``--attack`` value (``apgd-ce`` -> ``apgd-ce[restarts=1,iters=100]``)."""
    return parse_attack_spec(spec).name


def _freeze(overrides: dict[str, dict[str, str]]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    return tuple((a, tuple(sorted(s.items()))) for a, s in overrides.items() if s)
