"""``--method grace``: L = L_task + lambda_LAR * L_LAR-AWP + lambda_GV * L_GV on a LoRA-adapted vision tower.

Per step (see ``docs/grace.md``):
  1. x_adv: PGD (l-inf, 4/255, step 1/255, 10 steps, random start) on the current unperturbed model;
  2. (curriculum ablations) every ``curv_interval`` steps, and always at refresh steps, measure per-layer
     curvature on the first ``curv_batch_size`` clean images and fold it into the EMA; at step 0 and every
     K steps re-allocate the AWP ranks (written to ``<run>/lar_awp_ranks.json`` when they change);
  3. L_task: CE of the zero-shot head on the clean images;
  4. f_adv at the unperturbed weights, with the AWP branches attached at dW = 0, so its CE gives the first
     ascent gradient for free (``awp_reuse_adv_forward``);
  5. T_awp normalised ascent steps + projection, then dW is frozen; L_LAR-AWP and f_awp at W_pert;
  6. L_GV over (f_clean, f_adv, f_awp), no stop-gradient by default.

Cost: PGD-10 + 3 forward/backward passes + one extra backward (the first ascent gradient) + curvature
every ``curv_interval`` steps; about 1.27x TeCoA at the same PGD steps on micro-CLIP (CPU, see
``benchmarks/grace_step_cost.py``). A run shorter than K steps allocates ranks once, at step 0.

Ablations (the paper's Table 8): ``lora-ft`` (L_task only, no PGD), ``gv`` (+ GV over the two views
f_clean, f_adv), ``awp-uniform`` (+ LAR-AWP at one fixed rank everywhere, no GV), ``awp-curriculum``
(+ LAR-AWP with the curvature curriculum, no GV), ``full`` (GRACE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.finetune.grace.curvature import CurriculumSettings, CurvatureCurriculum, measure_layer_curvature
from grace_bench.finetune.grace.gram_volume import DEFAULT_GV_EPS, DEFAULT_GV_TINY, gram_volume_loss
from grace_bench.finetune.grace.lar_awp import AWPSettings, LowRankAWP
from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext, tower_of
from grace_bench.utils.atomic import atomic_write_json
from grace_bench.utils.parsing import parse_number

RANKS_FILE = "lar_awp_ranks.json"
ABLATIONS: tuple[str, ...] = ("lora-ft", "gv", "awp-uniform", "awp-curriculum", "full")
GV_STOP_GRAD = ("none", "clean", "adv", "awp")
PAPER = "Chopra et al. CVPR 2026 (GRACE)"
OURS = "ours (not stated in the paper; docs/grace.md)"


@dataclass(frozen=True)
class AblationSwitches:
    """Which GRACE components one ablation row turns on."""

    pgd: bool
    gv: bool
    awp: bool
    curriculum: bool


def ablation_switches(name: str) -> AblationSwitches:
    """The components of ablation ``name`` (one of ``ABLATIONS``)."""
    table = {
        "lora-ft": AblationSwitches(pgd=False, gv=False, awp=False, curriculum=False),
        "gv": AblationSwitches(pgd=True, gv=True, awp=False, curriculum=False),
        "awp-uniform": AblationSwitches(pgd=True, gv=False, awp=True, curriculum=False),
        "awp-curriculum": AblationSwitches(pgd=True, gv=False, awp=True, curriculum=True),
        "full": AblationSwitches(pgd=True, gv=True, awp=True, curriculum=True),
    }
    if name not in table:
        raise UserError(f"unknown GRACE ablation {name!r}; use --ablation {'|'.join(ABLATIONS)}")
    return table[name]


class GraceMethod(Method):
    """GRACE: LoRA + LAR-AWP (curvature-curriculum ranks) + Gram-volume alignment."""

    name: ClassVar[str] = "grace"
    description: ClassVar[str] = "GRACE: LoRA + layer-wise adaptive low-rank AWP + Gram-volume alignment"
    towers: ClassVar[tuple[str, ...]] = ("vision",)
    template_kind: ClassVar[str] = "single"
    defaults: ClassVar[dict[str, Hyper]] = {
        "ablation": Hyper("full", "docs/grace.md (Table 8 rows)", "lora-ft | gv | awp-uniform | awp-curriculum | full"),
        "task_templates": Hyper("single", OURS + "; as TeCoA/FARE/PMG-AFT",
                                "training head prompts: 'single' ('This is a photo of a {}') or 'suite'"),
        "eps": Hyper(4 / 255, PAPER, "PGD l-inf radius for x_adv (pixels in [0, 1])"),
        "pgd_steps": Hyper(10, PAPER, "PGD steps for x_adv"),
        "pgd_step_size": Hyper(1 / 255, PAPER, "PGD step size"),
        "lambda_lar": Hyper(1.0, OURS, "weight of L_LAR-AWP (CE on x_adv at W_pert)"),
        "lambda_gv": Hyper(1.0, OURS, "weight of the Gram-volume loss"),
        "gv_eps": Hyper(DEFAULT_GV_EPS, OURS, "eps added to the Gram matrix diagonal"),
        "gv_tiny": Hyper(DEFAULT_GV_TINY, OURS, "tiny in sqrt(|det| + tiny)"),
        "gv_stop_grad": Hyper("none", "docs/grace.md (no stop-gradient by default)",
                              "detach one GV view: none | clean | adv | awp"),
        "awp_max_rank": Hyper(4, PAPER, "maximum rank of each layer's AWP branch"),
        "awp_rho": Hyper(5e-3, OURS + "; AWP's gamma", "radius: ||dW||_F <= rho*||W0||_F (relative) or rho"),
        "awp_radius": Hyper("relative", OURS + "; as AWP", "relative | absolute"),
        "awp_steps": Hyper(1, OURS, "T_awp ascent steps per training step"),
        "awp_step_size": Hyper(None, OURS, "eta, relative like rho (None: eta = rho, one step reaches the ball)"),
        "awp_normalize_step": Hyper(True, OURS + "; as AWP",
                                    "scale each layer's ascent step so its first-order dW has norm eta*||W0||"),
        "awp_init_std": Hyper(1e-2, OURS, "A_awp ~ N(0, init_std^2/in): rows of norm ~init_std"),
        "awp_uniform_rank": Hyper(2, OURS + "; the curriculum's mean rank",
                                  "AWP rank of every layer in the awp-uniform ablation"),
        "awp_reuse_adv_forward": Hyper(True, OURS + " (exact; saves one forward)",
                                       "take the first ascent gradient from the f_adv forward (dW = 0 there)"),
        "curv_beta": Hyper(0.9, PAPER, "EMA factor of the per-layer curvature (0.85-0.95)"),
        "curv_refresh_every": Hyper(1000, PAPER, "K: re-allocate ranks every K steps (and at step 0)"),
        "curv_top_pct": Hyper(80.0, PAPER, "phi: layers above this percentile get the high rank"),
        "curv_bottom_pct": Hyper(20.0, PAPER, "layers below this percentile get the low rank"),
        "curv_ranks": Hyper([0, 2, 4], PAPER, "low, middle, high AWP ranks"),
        "curv_batch_size": Hyper(32, OURS, "n_v: curvature mini-batch (the first n_v clean images of the batch)"),
        "curv_interval": Hyper(10, OURS + "; EMA over ~10 measurements spans ~100 steps before each refresh",
                               "measure curvature every this many steps (always at refresh steps)"),
        "curv_inputs": Hyper("clean", OURS, "curvature mini-batch images: clean | adv"),
    }
    trainer_defaults: ClassVar[dict[str, Hyper]] = {
        "lr": Hyper(2e-4, PAPER),
        "weight_decay": Hyper(0.1, OURS + "; AdamW"),
        "batch_size": Hyper(256, PAPER),
        "epochs": Hyper(10.0, "ours: the paper's 50 epochs are doubtful (docs/grace.md); 10 as the baselines"),
        "warmup_steps": Hyper(500, OURS + "; cosine decay with linear warmup"),
        "lora_rank": Hyper(64, PAPER + "; LoRA alpha = 2*rank"),
    }

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(hparams)
        h = self.hparams
        self.switches = ablation_switches(str(h["ablation"]))
        if h["task_templates"] not in ("single", "suite"):
            raise UserError(f"method_args.task_templates {h['task_templates']!r} is unknown; use single or suite")
        if h["gv_stop_grad"] not in GV_STOP_GRAD:
            raise UserError(f"method_args.gv_stop_grad {h['gv_stop_grad']!r} is unknown; use {'|'.join(GV_STOP_GRAD)}")
        if h["curv_inputs"] not in ("clean", "adv"):
            raise UserError(f"method_args.curv_inputs {h['curv_inputs']!r} is unknown; use clean or adv")
        for key in ("lambda_lar", "lambda_gv", "gv_eps", "gv_tiny"):
            if h[key] < 0:
                raise UserError(f"method_args.{key} must be >= 0, got {h[key]}")
        for key in ("curv_batch_size", "curv_interval", "pgd_steps"):
            if h[key] < (0 if key == "pgd_steps" else 1):
                raise UserError(f"method_args.{key} must be positive, got {h[key]}")
        step_size = h["awp_step_size"]
        if step_size is not None:
            try:
                step_size = parse_number(step_size)
            except ValueError:
                raise UserError(f"method_args.awp_step_size must be a number, got {step_size!r}") from None
        h["awp_step_size"] = step_size
        self.awp_settings = AWPSettings(
            max_rank=int(h["awp_max_rank"]), rho=float(h["awp_rho"]), radius=str(h["awp_radius"]),
            steps=int(h["awp_steps"]), step_size=step_size, normalize_step=bool(h["awp_normalize_step"]),
            init_std=float(h["awp_init_std"]),
        )
        self.awp_settings.validate()
        bad_ranks = f"method_args.curv_ranks must be three integers like 0,2,4, got {h['curv_ranks']!r}"
        try:
            ranks = tuple(int(r) for r in h["curv_ranks"])
        except (TypeError, ValueError):
            raise UserError(bad_ranks) from None
        if len(ranks) != 3:
            raise UserError(bad_ranks)
        h["curv_ranks"] = list(ranks)
        self.curriculum_settings = CurriculumSettings(
            beta=float(h["curv_beta"]), refresh_every=int(h["curv_refresh_every"]), top_pct=float(h["curv_top_pct"]),
            bottom_pct=float(h["curv_bottom_pct"]), ranks=ranks, max_rank=self.awp_settings.max_rank,
        )
        self.curriculum_settings.validate()
        if not 0 <= int(h["awp_uniform_rank"]) <= self.awp_settings.max_rank:
            raise UserError(f"method_args.awp_uniform_rank must be in 0..{self.awp_settings.max_rank}")
        self.awp: LowRankAWP | None = None
        self.curriculum: CurvatureCurriculum | None = None
        self._pending_state: dict[str, Any] | None = None
        self._mean_rank: torch.Tensor | None = None

    # ---- Method interface ---------------------------------------------------------------------------
    def train_templates(self, suite_templates: list[str]) -> list[str]:
        if self.hparams["task_templates"] == "suite":
            return list(suite_templates)
        return super().train_templates(suite_templates)

    def setup(self, ctx: TrainContext) -> None:
        """Build the AWP branches and the curriculum over the LoRA layers of the trained towers."""
        layers = {n: p for n, p in ctx.lora.items() if tower_of(n) in self.towers}
        if not layers:
            raise UserError("GRACE needs LoRA on the vision tower; set --lora-rank 64 (the paper's rank)")
        if self.switches.awp:
            self.awp = LowRankAWP(layers, self.awp_settings)
            if not self.switches.curriculum:
                self.awp.set_ranks({n: int(self.hparams["awp_uniform_rank"]) for n in layers})
        if self.switches.curriculum:
            self.curriculum = CurvatureCurriculum(list(layers), self.curriculum_settings)
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        h, sw, clf = self.hparams, self.switches, ctx.classifier
        logs: dict[str, torch.Tensor] = {}
        x_adv = ctx.pgd(clf, x, y, step) if sw.pgd else None  # on the current unperturbed model
        if self.curriculum is not None:
            self._curriculum_step(ctx, x if h["curv_inputs"] == "clean" else x_adv, y, step, logs)

        with ctx.autocast():
            f_clean = clf.image_features(x)
            loss_task = F.cross_entropy(clf.logits_from_features(f_clean).float(), y)
        logs["loss_task"] = loss_task.detach()
        total = loss_task
        if not sw.pgd:
            return total, logs

        f_adv = f_awp = None
        if self.awp is not None:
            f_adv, f_awp, loss_lar = self._awp_branch(ctx, x_adv, y, step, logs, need_f_adv=sw.gv)
            total = total + h["lambda_lar"] * loss_lar
            logs["loss_lar_awp"] = loss_lar.detach()
        elif sw.gv:
            with ctx.autocast():
                f_adv = clf.image_features(x_adv)

        if sw.gv:
            views = {"clean": f_clean, "adv": f_adv, "awp": f_awp}
            if h["gv_stop_grad"] != "none" and views[h["gv_stop_grad"]] is not None:
                views[h["gv_stop_grad"]] = views[h["gv_stop_grad"]].detach()
            loss_gv = gram_volume_loss(
                views["clean"].float(), views["adv"].float(), None if f_awp is None else views["awp"].float(),
                eps=float(h["gv_eps"]), tiny=float(h["gv_tiny"]),
            )
            total = total + h["lambda_gv"] * loss_gv
            logs["loss_gv"] = loss_gv.detach()
        return total, logs

    # ---- pieces -------------------------------------------------------------------------------------
    def _awp_branch(self, ctx: TrainContext, x_adv: torch.Tensor, y: torch.Tensor, step: int,
                    logs: dict[str, torch.Tensor], *, need_f_adv: bool):
        """Ascend on the AWP branches, then return (f_adv or None, f_awp, L_LAR-AWP at W_pert)."""
        clf, awp = ctx.classifier, self.awp
        assert awp is not None
        awp.init_branches(ctx.generator(step, stream=2))
        f_adv = None
        try:
            with awp.attached():
                first = None
                if need_f_adv or self.hparams["awp_reuse_adv_forward"]:
                    with ctx.autocast():
                        feats = clf.image_features(x_adv)  # dW = 0 here: exactly the unperturbed f_adv
                        ce_adv = F.cross_entropy(clf.logits_from_features(feats).float(), y)
                    if self.hparams["awp_reuse_adv_forward"] and awp.branch_tensors():
                        first = torch.autograd.grad(ce_adv, awp.branch_tensors(), retain_graph=need_f_adv,
                                                    allow_unused=True)
                    f_adv = feats if need_f_adv else None
                    logs["loss_adv"] = ce_adv.detach()

                def ascent_loss() -> torch.Tensor:
                    with ctx.autocast():
                        return F.cross_entropy(clf(x_adv).float(), y)

                awp.ascend(ascent_loss, first_grads=first)
                awp.freeze()
                with ctx.autocast():
                    f_awp = clf.image_features(x_adv)  # at W_pert; gradients reach LoRA A, B with dW constant
                    loss_lar = F.cross_entropy(clf.logits_from_features(f_awp).float(), y)
                norms = awp.delta_norms()
                if norms:
                    rel = torch.stack([norms[n] / awp.radius(n) for n in norms])
                    logs["awp_rel_norm"] = rel.mean()
        finally:
            awp.clear()
        return f_adv, f_awp, loss_lar

    def _curriculum_step(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, step: int,
                         logs: dict[str, torch.Tensor]) -> None:
        cur, awp = self.curriculum, self.awp
        assert cur is not None
        if step % int(self.hparams["curv_interval"]) == 0 or cur.due(step) or cur.ema is None:
            n_v = min(int(self.hparams["curv_batch_size"]), x.shape[0])
            layers = ctx.lora
            factors = [[layers[n].lora_A, layers[n].lora_B] for n in cur.layer_names]
            with ctx.autocast():
                values = measure_layer_curvature(ctx.classifier, x[:n_v].detach(), y[:n_v], factors)
            ctx.dist.all_reduce_mean_([values])  # every rank keeps the same EMA, hence the same ranks
            cur.update(values)
        allocation = cur.maybe_refresh(step)
        if allocation is not None and awp is not None:
            awp.set_ranks(allocation)
            self._mean_rank = torch.tensor(sum(allocation.values()) / len(allocation), device=x.device)
            self._record_allocation(ctx, step)
        if awp is not None and self._mean_rank is not None:
            logs["awp_mean_rank"] = self._mean_rank

    def _record_allocation(self, ctx: TrainContext, step: int) -> None:
        """Write the rank history to ``<run>/lar_awp_ranks.json`` (atomically, main rank, real run dirs only)."""
        cur = self.curriculum
        if cur is None or not ctx.dist.is_main:
            return
        run_dir = Path(ctx.config.out)
        if not (run_dir / "config.json").is_file():  # not a trainer-managed run directory (e.g. a unit test)
            return
        atomic_write_json(run_dir / RANKS_FILE, {"layers": cur.layer_names, "history": cur.history})
        if ctx.config.progress:
            from tqdm.auto import tqdm

            tqdm.write(f"LAR-AWP rank allocation at step {step}: {cur.history[-1]['counts']} (rank: layers)")

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        if self.awp is not None:
            state["awp_ranks"] = dict(self.awp.ranks)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.awp is None and self.curriculum is None and (self.switches.awp or self.switches.curriculum):
            self._pending_state = dict(state)  # setup() has not run yet; restore there
            return
        self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        if self.curriculum is not None and "curriculum" in state:
            self.curriculum.load_state_dict(state["curriculum"])
        if self.awp is not None and "awp_ranks" in state:
            self.awp.set_ranks({k: int(v) for k, v in state["awp_ranks"].items()})
            if self.curriculum is not None and self.curriculum.ranks is not None:
                ranks = list(self.awp.ranks.values())
                device = next(iter(self.awp.layers.values())).lora_A.device
                self._mean_rank = torch.tensor(sum(ranks) / len(ranks), device=device)

    def config_record(self) -> dict[str, Any]:
        record = super().config_record()
        record["resolved"] = {
            "ablation": self.hparams["ablation"],
            "components": vars(self.switches),
            "awp": self.awp_settings.to_dict(),
            "curriculum": {
                "beta": self.curriculum_settings.beta, "refresh_every": self.curriculum_settings.refresh_every,
                "top_pct": self.curriculum_settings.top_pct, "bottom_pct": self.curriculum_settings.bottom_pct,
                "ranks": list(self.curriculum_settings.ranks),
            },
            "objective": "L_task + lambda_lar * L_LAR-AWP + lambda_gv * L_GV",
        }
        if self.curriculum is not None:
            record["rank_history"] = self.curriculum.history
        return record
