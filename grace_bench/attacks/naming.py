"""Human-readable attack names for tables and figures, built from what a result recorded.

``describe_attack`` turns a recorded adversarial entry (its ``attack`` string and resolved ``config``), a
summary ``protocol`` or a bare ``--attack`` string into e.g. ``APGD-CE 1×100`` (restarts × iterations);
``robust_title`` adds the threat model: ``robust (APGD-CE 1×100, ε=4/255 ℓ∞)``. When no attack ran the
text says so and names no threat model. Results written before canonical names existed still describe
correctly: their ``config["settings"]`` holds the settings that actually ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from grace_bench.attacks.threat import VERSION_SETTINGS, format_eps, parse_attack_spec
from grace_bench.errors import UserError

NO_ATTACK = "no attack"
NORM_SYMBOLS = {"linf": "ℓ∞", "l2": "ℓ2"}
_VERSION_NAMES = {"standard": "AA-standard", "plus": "AA-plus", "rand": "AA-rand"}


def describe_subattack(name: str, settings: Mapping[str, Any]) -> str:
    """``APGD-T 1×100 (9 targets)``, ``Square 1×5000 queries``, ``PGD 10 steps of 1/255``..."""
    s = dict(settings)
    if name == "pgd":
        steps = s.get("steps", "?")
        step = s.get("step_size", s.get("step", "?"))
        return f"PGD {steps} steps of {step}"
    title = name.upper() if name != "square" else "Square"
    if name == "square":
        text = f"{title} {s.get('restarts', 1)}×{s.get('queries', '?')} queries"
    else:
        text = f"{title} {s.get('restarts', 1)}×{s.get('iterations', '?')}"
    extras = []
    if "targets" in s:
        extras.append(f"{s['targets']} targets")
    if int(s.get("eot", 1) or 1) != 1:
        extras.append(f"EOT {s['eot']}")
    return text + (f" ({', '.join(extras)})" if extras else "")


def describe_attack(recorded: Mapping[str, Any] | str | None, *, short: bool = False) -> str:
    """An explicit name of the attack a result ran (``no attack`` for none).

    ``short`` names an AutoAttack version (``AA-standard``) without listing its fixed sub-attacks; custom
    lists and single attacks always spell out restarts × iterations.
    """
    if recorded is None:
        return "attack not recorded"
    if isinstance(recorded, str):
        return _describe_spec(recorded, short)
    attack = recorded.get("attack")
    config = recorded.get("config")
    if isinstance(config, Mapping):
        if isinstance(config.get("settings"), Mapping) and config.get("attacks") is not None:
            parts = [describe_subattack(a, config["settings"].get(a, {})) for a in config["attacks"]]
            return _with_version(str(config.get("version") or ""), parts, short)
        if config.get("attack") == "pgd":
            return describe_subattack("pgd", config)
    if attack is None:
        return "attack not recorded"
    return _describe_spec(str(attack), short)


def _describe_spec(text: str, short: bool) -> str:
    try:
        spec = parse_attack_spec(text)
    except UserError:
        return text  # an attack this version cannot parse: show it as recorded
    if spec.kind == "none":
        return NO_ATTACK
    settings = spec.settings_dict()
    if spec.kind == "pgd":
        return describe_subattack("pgd", settings["pgd"])
    if spec.version in VERSION_SETTINGS:
        table = VERSION_SETTINGS[spec.version]
        return _with_version(spec.version, [describe_subattack(a, s) for a, s in table.items()], short)
    return _with_version("custom", [describe_subattack(a, settings.get(a, {})) for a in spec.attacks], short)


def _with_version(version: str, parts: Sequence[str], short: bool) -> str:
    if version in _VERSION_NAMES:
        return _VERSION_NAMES[version] if short else f"{_VERSION_NAMES[version]}: {' + '.join(parts)}"
    return " + ".join(parts) if parts else "no sub-attack"


def threat_text(eps: Any, norm: Any) -> str:
    """``ε=4/255 ℓ∞`` (parts left out when not recorded)."""
    parts = []
    if eps is not None:
        try:
            parts.append(f"ε={format_eps(eps)}")
        except UserError:
            parts.append(f"ε={eps}")
    if norm:
        parts.append(NORM_SYMBOLS.get(str(norm).lower(), str(norm)))
    return " ".join(parts)


def is_no_attack(recorded: Mapping[str, Any] | str | None) -> bool:
    """True when the recorded attack is ``none``."""
    attack = recorded.get("attack") if isinstance(recorded, Mapping) else recorded
    return isinstance(attack, str) and attack.strip().lower() == "none"


def robust_title(recorded: Mapping[str, Any] | str | None, eps: Any = None, norm: Any = None) -> str:
    """Column/axis title of robust accuracy: ``robust (APGD-CE 1×100, ε=4/255 ℓ∞)``; ``robust (no attack)``."""
    if is_no_attack(recorded):
        return f"robust ({NO_ATTACK})"
    if isinstance(recorded, Mapping):
        eps = recorded.get("eps", eps) if eps is None else eps
        norm = recorded.get("norm", norm) if norm is None else norm
    threat = threat_text(eps, norm)
    return f"robust ({describe_attack(recorded, short=True)}" + (f", {threat})" if threat else ")")


def summary_attack_entries(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The recorded adversarial entries of an eval summary, or the protocol itself when none (e.g. no attack)."""
    entries = [e for e in (summary.get("adversarial") or {}).values() if isinstance(e, Mapping) and e]
    if entries:
        return entries
    proto = summary.get("protocol") or {}
    return [proto] if isinstance(proto, Mapping) and proto.get("attack") is not None else []


def summaries_robust_title(summaries: Sequence[Mapping[str, Any]], default: str = "robust") -> str:
    """One robust-accuracy title for a table over eval summaries: the shared recorded attack, or ``mixed``."""
    proto_of = [s.get("protocol") or {} for s in summaries]
    titles = []
    for summary, proto in zip(summaries, proto_of):
        for entry in summary_attack_entries(summary):
            title = robust_title(entry, proto.get("eps"), proto.get("norm"))
            if title not in titles:
                titles.append(title)
    if not titles:
        return default
    return titles[0] if len(titles) == 1 else "robust (mixed attacks)"
