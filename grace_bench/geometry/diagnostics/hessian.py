"""``hessian``: top eigenvalues (Lanczos), trace (Hutchinson / Hutch++), layer curvature, spectral density (SLQ)."""

from __future__ import annotations

from dataclasses import dataclass

from grace_bench.errors import UserError
from grace_bench.geometry.config import DataConfig, NameOf, setting
from grace_bench.geometry.registry import register


@dataclass
class HessianConfig(DataConfig):
    """Settings of the Hessian diagnostics (``geometry.hessian``)."""

    n: int = setting(32, "size of the fixed data subset (default 32; every HVP costs about two forward+backward "
                         "passes over all n images)", minimum=1)
    group: str = setting("vision", "parameters: vision | lora | all | a name prefix (default vision)")
    top_k: int = setting(5, "number of top eigenvalues (default 5)", minimum=1)
    lanczos_iter: int = setting(100, "maximum Lanczos steps (HVPs)", minimum=1)
    tol: float = setting(1e-3, "convergence: relative eigenvalue error of each wanted Ritz value, as judged by the "
                               "Lanczos criterion (default 1e-3)")
    lanczos_criterion: str = setting(
        "estimate", "estimate: min(r, r^2/gap)/|theta| <= tol, the usual Lanczos error estimate (default); "
                    "residual: r/|theta| <= tol, a guaranteed bound that needs more HVPs",
        choices=("estimate", "residual"))
    trace_samples: int = setting(10, "Hutchinson samples (0 = skip trace and layers; default 10). The Krylov part of "
                                     "the top-k Lanczos run is taken exactly and only the rest is sampled (std err "
                                     "reported as trace_se)", minimum=0)
    hutchpp: int = setting(0, "Hutch++ matvec budget (0 = skip)", minimum=0)
    slq_runs: int = setting(1, "SLQ start vectors (0 = skip the density; default 1, as PyHessian's n_v=1). The first "
                               "run is the top-k Lanczos run itself and costs no extra HVPs", minimum=0)
    slq_iter: int = setting(24, "Lanczos steps per SLQ run (default 24)", minimum=0)
    granularity: str = setting("block", "layer unit of the per-layer curvature (default: transformer block)",
                               choices=("block", "module", "param"))
    power: bool = setting(False, "also run power iteration (for comparison)")
    cache_graph: bool = setting(False, "keep the gradient graph of all batches in memory (faster HVPs; one batch "
                                       "always is)", hashed=False)

    def check(self, name_of: NameOf) -> None:
        if self.trace_samples == 1:
            raise UserError(f"{name_of('trace_samples')} must be 0 (skip) or at least 2 for an error bar, got 1")
        if 0 < self.hutchpp < 6:
            raise UserError(f"{name_of('hutchpp')} must be 0 (skip) or at least 6, got {self.hutchpp}")
        if self.lanczos_iter < self.top_k:
            raise UserError(f"{name_of('lanczos_iter')} ({self.lanczos_iter}) must be at least "
                            f"{name_of('top_k')} ({self.top_k})")
        if self.slq_runs > 0 and self.slq_iter < 1:
            raise UserError(f"{name_of('slq_iter')} must be at least 1 when {name_of('slq_runs')} > 0")


def run_hessian(inp) -> tuple[dict, dict]:
    """Lanczos top-k, deflated Hutchinson + layers, optional Hutch++ / power, SLQ on the config's group."""
    from grace_bench.eval.context import classifier_for
    from grace_bench.geometry.losses import select_params
    from grace_bench.geometry.operators import build_operator
    from grace_bench.geometry.reports import hessian_fields, hessian_report

    cfg: HessianConfig = inp.config
    clf = classifier_for(inp.clip, inp.data.suite, inp.data.spec, device=inp.device, progress=inp.progress).eval()
    op = build_operator(clf, inp.data.batches, select_params(clf, cfg.group),
                        cache_graph=True if cfg.cache_graph else None)
    report, arrays = hessian_report(
        op, top_k=cfg.top_k, lanczos_iter=cfg.lanczos_iter, tol=cfg.tol, criterion=cfg.lanczos_criterion,
        trace_samples=cfg.trace_samples, hutchpp_matvecs=cfg.hutchpp, slq_runs=cfg.slq_runs, slq_iter=cfg.slq_iter,
        power=cfg.power, granularity=cfg.granularity, seed=cfg.seed, progress=inp.progress,
    )
    payload = {"data": inp.data.info, "group": cfg.group, **hessian_fields(report, arrays),
               "loss": "mean zero-shot-head cross-entropy over the fixed subset (math SDPA, eval mode)"}
    return payload, arrays


def headline(record: dict) -> str:
    tr = record.get("trace") or {}
    extra = f", trace {tr['trace']:.4g} ± {tr['trace_se']:.2g}" if tr else ""
    return f"λ_max {record.get('lambda_max'):.4g}{extra}"


register("hessian", HessianConfig, run_hessian, order=1, headline=headline,
         help="top eigenvalues (Lanczos), trace (Hutchinson/Hutch++), layer curvature, spectral density (SLQ)",
         study={"micro": {"n": 64, "top_k": 3, "trace_samples": 20, "slq_runs": 1},
                "quick": {"n": 16, "top_k": 1, "trace_samples": 4, "slq_runs": 1, "slq_iter": 8, "lanczos_iter": 20},
                "paper": {"top_k": 3}})
