"""``weights``: relative weight drift ``||θ-θ0||/||θ0||`` from a reference, overall, per tower and per layer."""

from __future__ import annotations

from dataclasses import dataclass

from grace_bench.geometry.config import GeometryConfig
from grace_bench.geometry.registry import register


@dataclass
class WeightsConfig(GeometryConfig):
    """Settings of the weight drift (``geometry.weights``): none beyond the seed; it needs a reference."""

    REF = "required"


def run_weights(inp) -> tuple[dict, dict]:
    import numpy as np

    from grace_bench.geometry.weights import weight_drift

    ref = inp.ref
    drift = weight_drift(inp.clip.model.state_dict(), ref.model.state_dict())
    arrays = {"layer_relative": np.asarray([v["relative"] for v in drift["layers"].values()])}
    ref_info = {"spec": ref.spec, "fingerprint": ref.fingerprint(), "arch": ref.arch}
    return {"ref": ref_info, **drift, "layer_names": list(drift["layers"])}, arrays


def headline(record: dict) -> str:
    return f"relative weight drift {record['overall']['relative']:.4g}"


register("weights", WeightsConfig, run_weights, order=5, headline=headline,
         help="relative weight drift ||θ-θ0||/||θ0||, overall, per tower and per layer",
         study={"micro": {}, "quick": {}, "paper": {}})
