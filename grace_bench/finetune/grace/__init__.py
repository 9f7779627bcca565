"""GRACE's parts: Gram-volume loss, low-rank AWP (LAR-AWP), curvature curriculum, and the ``grace`` method.

Importing this package registers ``--method grace`` with the fine-tuning method registry.
"""

from grace_bench.finetune.grace.curvature import CurriculumSettings, CurvatureCurriculum, allocate_ranks
from grace_bench.finetune.grace.gram_volume import gram_determinants, gram_volume_loss
from grace_bench.finetune.grace.lar_awp import AWPSettings, LowRankAWP
from grace_bench.finetune.grace.method import ABLATIONS, GraceMethod, ablation_switches

__all__ = [
    "ABLATIONS", "AWPSettings", "CurriculumSettings", "CurvatureCurriculum", "GraceMethod", "LowRankAWP",
    "ablation_switches", "allocate_ranks", "gram_determinants", "gram_volume_loss",
]
