"""Geometry diagnostics: Hessian spectra and curvature, sharpness, loss landscapes, feature and weight drift.

Library entry points: ``run(kind, clip, data, config) -> GeometryResult`` (record + arrays) and
``compute(kind, clip, config, out)`` (the same into a resumable result file); one config dataclass per
kind (``HessianConfig``, ``SharpnessConfig``, ``LandscapeConfig``, ``FeatureConfig``, ``WeightsConfig``),
registered in ``registry``. Curvature: operators (``operators``) apart from estimators (``estimators``).

Every tool takes an ``nn.Module`` (usually a ``ZeroShotClassifier``) and fixed data; none re-implements
CLIP plumbing. See each module's docstring for the exact definitions it computes.

Names are imported lazily, so importing ``grace_bench.geometry.cli`` (done by every ``grace-bench`` start)
does not load torch.
"""

from __future__ import annotations

from grace_bench.utils.lazy import lazy_getattr

_EXPORTS = {
    "BlockOperator": "operators",
    "CurvatureOperator": "operators",
    "DataParallelOperator": "operators",
    "Diagonal": "diagonal",
    "FeatureConfig": "diagnostics.features",
    "GeometryConfig": "config",
    "GeometryData": "api",
    "GeometryResult": "api",
    "HessianConfig": "diagnostics.hessian",
    "HessianOperator": "operators",
    "LandscapeConfig": "diagnostics.landscape",
    "MatrixOperator": "operators",
    "SharpnessConfig": "diagnostics.sharpness",
    "WeightsConfig": "diagnostics.weights",
    "compute": "api",
    "gauss_newton_diagonal": "diagonal",
    "hutchinson_diagonal": "estimators",
    "kinds": "registry",
    "layer_blocks": "operators",
    "load_data": "api",
    "run": "api",
    "MinibatchCKA": "features",
    "average_sharpness": "sharpness",
    "build_operator": "operators",
    "centroid_cosine": "features",
    "cka": "features",
    "delta_lid": "features",
    "filter_normalized_direction": "landscape",
    "fixed_subset": "losses",
    "gram_drift": "features",
    "gram_linear": "features",
    "gram_rbf": "features",
    "hessian_report": "reports",
    "hutch_plus_plus": "estimators",
    "hutchinson": "estimators",
    "interpolation": "landscape",
    "lanczos_eigenvalues": "estimators",
    "landscape": "landscape",
    "layer_features": "features",
    "layerwise_cka": "features",
    "layerwise_cka_from_features": "features",
    "lid_mle": "features",
    "linear_cka": "features",
    "loss_and_accuracy": "losses",
    "minibatch_cka": "features",
    "power_iteration": "estimators",
    "rbf_cka": "features",
    "resblock_hooks": "features",
    "run_lanczos": "estimators",
    "select_params": "losses",
    "spectral_density": "estimators",
    "weight_drift": "weights",
    "worst_case_sharpness": "sharpness",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("grace_bench.geometry", _EXPORTS)
