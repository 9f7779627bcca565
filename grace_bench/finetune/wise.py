"""WiSE-FT (Wortsman et al., CVPR 2022): weight-space interpolation between a zero-shot and a fine-tuned model.

``theta_alpha = (1 - alpha) * theta_zs + alpha * theta_ft`` over the **whole** state dict, text tower and
logit scale included. The endpoints are copied, not computed, so alpha = 0 is the zero-shot state dict and
alpha = 1 the fine-tuned one bit for bit. Each alpha becomes a run directory (``config.json`` +
``model.safetensors``) that ``grace-bench eval`` reads like any fine-tuning run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from grace_bench.errors import UserError
from grace_bench.utils.atomic import atomic_save_safetensors, atomic_write_json


def parse_alphas(spec: str) -> list[float]:
    """``"0:1:0.1"`` (start:stop:step, stop included), ``"0,0.5,1"`` or ``"0.5"`` -> sorted alphas in [0, 1]."""
    text = str(spec).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            n = int(round((stop - start) / step))
            if abs(start + n * step - stop) > 1e-9 * max(1.0, abs(stop)):
                raise ValueError
            alphas = [round(start + i * step, 10) for i in range(n + 1)]
        else:
            alphas = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"bad --alpha '{spec}'; write start:stop:step (e.g. 0:1:0.1) or a list like 0,0.5,1") from None
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise UserError(f"--alpha values must lie in [0, 1], got '{spec}'")
    return sorted(set(alphas))


def interpolate_state_dicts(zs: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * zs + alpha * ft`` per floating tensor (computed in fp32, stored in the tensor's dtype).

    alpha = 0 and alpha = 1 return exact copies of ``zs`` and ``ft``. Non-floating tensors must be equal.
    """
    if set(zs) != set(ft):
        missing = sorted(set(zs) ^ set(ft))
        raise UserError(f"the two checkpoints have different tensors (e.g. '{missing[0]}'); "
                        "WiSE-FT needs two checkpoints of the same architecture")
    out: dict[str, torch.Tensor] = {}
    for key, a in zs.items():
        b = ft[key]
        if a.shape != b.shape:
            raise UserError(f"tensor '{key}' has shape {tuple(a.shape)} vs {tuple(b.shape)}; "
                            "WiSE-FT needs two checkpoints of the same architecture")
        if alpha == 0.0:
            out[key] = a.detach().clone()
        elif alpha == 1.0:
            out[key] = b.detach().clone()
        elif a.is_floating_point():
            mixed = torch.lerp(a.detach().float(), b.detach().to(a.device).float(), float(alpha))
            out[key] = mixed.to(a.dtype)
        else:
            if not torch.equal(a, b):
                raise UserError(f"non-float tensor '{key}' differs between the checkpoints; cannot interpolate it")
            out[key] = a.detach().clone()
    return out


def alpha_dirname(alpha: float) -> str:
    """Folder name of one alpha, e.g. ``alpha_0.30``."""
    return f"alpha_{alpha:.2f}" if round(alpha, 2) == alpha else f"alpha_{alpha:g}"


def write_wise_runs(zs_spec: str, ft_spec: str, alphas: list[float], out: str | Path, *,
                    base: str | None = None, trust_pickle: bool = False, progress: bool = True) -> list[Path]:
    """Load both checkpoints, write one run directory per alpha under ``out``; return their paths."""
    from tqdm.auto import tqdm

    from grace_bench.models.checkpoints import load_checkpoint

    zs = load_checkpoint(zs_spec, base=base, trust_pickle=trust_pickle)
    ft = load_checkpoint(ft_spec, base=base or zs_spec, trust_pickle=trust_pickle)
    if zs.arch != ft.arch:
        raise UserError(f"architectures differ ({zs.arch} vs {ft.arch}); WiSE-FT interpolates one architecture")
    zs_sd, ft_sd = zs.model.state_dict(), ft.model.state_dict()
    paths = []
    for alpha in tqdm(alphas, desc="wise-ft", unit="alpha", disable=not progress):
        sd = interpolate_state_dicts(zs_sd, ft_sd, alpha)
        folder = Path(out) / alpha_dirname(alpha)
        meta = {"arch": zs.arch, "method": "wise-ft", "alpha": repr(alpha), "format": "open_clip"}
        atomic_save_safetensors(folder / "model.safetensors", sd, metadata=meta)
        atomic_write_json(folder / "config.json", wise_config(zs, ft, zs_spec, ft_spec, alpha))
        paths.append(folder)
    return paths


def wise_config(zs: Any, ft: Any, zs_spec: str, ft_spec: str, alpha: float) -> dict[str, Any]:
    """The run config of one interpolated checkpoint (readable by ``load_checkpoint("<dir>")``)."""
    record = {
        "arch": zs.arch, "base": zs_spec, "method": "wise-ft", "alpha": alpha,
        "zero_shot": {"spec": zs_spec, "fingerprint": zs.fingerprint()},
        "fine_tuned": {"spec": ft_spec, "fingerprint": ft.fingerprint(), "method": ft.info.get("method")},
        "formula": "(1 - alpha) * zero_shot + alpha * fine_tuned over the whole state dict",
    }
    if ft.info.get("head_transform") is not None:  # LAAT: the text tower is frozen, so the expansion carries over
        record["head_transform"] = ft.info["head_transform"]
    return record


def wise_label(alpha: float) -> str:
    """The table label of an interpolated checkpoint, e.g. ``wise-ft alpha=0.3``."""
    return f"wise-ft alpha={float(alpha):g}"


def endpoint_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The model an endpoint run (alpha 0 or 1) is a bit-exact copy of: its ``spec`` and ``method``; else None.

    Such a run must not give its own label to that model: alpha = 0 *is* the zero-shot model and alpha = 1
    the fine-tuned one, so evaluating them keeps those models' own labels.
    """
    if config.get("method") != "wise-ft" or config.get("alpha") is None:
        return None
    alpha = float(config["alpha"])
    side = "zero_shot" if alpha == 0.0 else "fine_tuned" if alpha == 1.0 else None
    source = config.get(side) if side else None
    if not isinstance(source, dict) or not source.get("spec"):
        return None
    return {"spec": str(source["spec"]), "method": source.get("method")}
