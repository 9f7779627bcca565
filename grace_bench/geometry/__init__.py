"""Geometry diagnostics: Hessian spectra and curvature, sharpness, loss landscapes, feature and weight drift.

Every tool takes an ``nn.Module`` (usually a ``ZeroShotClassifier``) and fixed data; none re-implements
CLIP plumbing. See each module's docstring for the exact definitions it computes.
"""

from grace_bench.geometry.features import (
    MinibatchCKA,
    centroid_cosine,
    cka,
    delta_lid,
    gram_drift,
    gram_linear,
    gram_rbf,
    layer_features,
    layerwise_cka,
    layerwise_cka_from_features,
    lid_mle,
    linear_cka,
    minibatch_cka,
    rbf_cka,
    resblock_hooks,
)
from grace_bench.geometry.hessian import (
    HessianOperator,
    build_operator,
    hessian_report,
    hutch_plus_plus,
    hutchinson,
    lanczos_eigenvalues,
    power_iteration,
    run_lanczos,
    spectral_density,
)
from grace_bench.geometry.landscape import filter_normalized_direction, interpolation, landscape
from grace_bench.geometry.losses import fixed_subset, loss_and_accuracy, select_params
from grace_bench.geometry.sharpness import average_sharpness, worst_case_sharpness
from grace_bench.geometry.weights import weight_drift

__all__ = [
    "HessianOperator", "MinibatchCKA", "average_sharpness", "build_operator", "centroid_cosine", "cka", "delta_lid",
    "filter_normalized_direction", "fixed_subset", "gram_drift", "gram_linear", "gram_rbf", "hessian_report",
    "hutch_plus_plus", "hutchinson", "interpolation", "lanczos_eigenvalues", "landscape", "layer_features",
    "layerwise_cka", "layerwise_cka_from_features", "lid_mle", "linear_cka", "loss_and_accuracy", "minibatch_cka",
    "power_iteration", "rbf_cka", "resblock_hooks", "run_lanczos", "select_params", "spectral_density",
    "weight_drift", "worst_case_sharpness",
]
