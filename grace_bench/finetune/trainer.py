"""The one training loop shared by every method: AdamW (or the method's optimiser) + warmup/cosine, clipping, bf16,
checkpoints, resume, DDP.

``train(config)`` loads the base checkpoint and the suite's ID training split, builds the method's
``TrainContext`` and runs. Determinism: the data order of epoch ``e`` is a permutation seeded by
``(seed, e)``, the position inside it is part of the trainer state, and all RNG states are saved, so a
run killed after a checkpoint and resumed with ``--resume`` reaches bit-identical weights on CPU.
A non-finite loss or gradient norm raises ``NonFiniteLossError`` before the optimiser step, and so does an
update that leaves a trainable tensor non-finite or beyond ``WEIGHT_GROWTH`` times its starting size
(``max(1, max |w0|)``); before every save the weights must be finite and give a finite loss on the last
training batch. Nothing is written on the way out, so the last good checkpoint stays the newest.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from grace_bench.errors import NonFiniteLossError, UserError
from grace_bench.finetune import checkpointing as ckpt
from grace_bench.finetune.config import FinetuneConfig, identity_diff
from grace_bench.finetune.distributed import init_distributed
from grace_bench.finetune.methods import get_method
from grace_bench.finetune.methods.base import Method, TrainContext, tower_of
from grace_bench.finetune.resolve import resolve_config
from grace_bench.models.lora import LoRAConfig, apply_lora, load_lora_state_dict, lora_layers, lora_state_dict, merge
from grace_bench.models.zero_shot import ZeroShotClassifier
from grace_bench.utils.atomic import atomic_write_json, atomic_write_text
from grace_bench.utils.runtime_info import runtime_info

# An update that makes a trainable tensor's max |w| exceed this many times max(1, its starting max |w|) diverged.
WEIGHT_GROWTH = 1e4


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    step: int
    total_steps: int
    last_checkpoint: Path | None
    val_acc: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def train(
    config: FinetuneConfig,
    *,
    clip=None,
    train_data: Dataset | None = None,
    val_data: Dataset | None = None,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Run (or resume) a fine-tuning run described by ``config``.

    ``clip``/``train_data``/``val_data`` override loading ``config.base`` and the suite splits (tests, API
    users). ``stop_at_step`` ends the loop right after that step as if the process were killed there (no
    final checkpoint, no final model): used to test resume.
    """
    return Trainer(config, clip=clip, train_data=train_data, val_data=val_data).run(stop_at_step=stop_at_step)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data permutation of ``epoch``: a pure function of (seed, epoch), so resume needs no saved order."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def cosine_schedule(warmup: int, total: int, floor: float = 0.0):
    """LR multiplier: linear warmup over ``warmup`` steps to 1, then cosine decay to ``floor`` at ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """Builds everything for one run, then ``run()`` executes the loop. See ``train``."""

    def __init__(self, config: FinetuneConfig, *, clip=None, train_data: Dataset | None = None,
                 val_data: Dataset | None = None) -> None:
        self.cfg = resolve_config(config)  # validates every key before anything else uses it
        self.method_cls = get_method(self.cfg.method)
        self.dist, self.device = init_distributed(self.cfg.device)
        self._warmup_is_default = config.warmup_steps is None
        self.method: Method = self.method_cls(self.cfg.method_args)
        self.run_dir = Path(self.cfg.out)
        self._check_run_dir()
        self.dist.barrier()  # every rank has checked the run dir before rank 0 writes into it
        seed_everything(self.cfg.seed)

        self.clip = clip if clip is not None else self._load_base()
        self.clip.model.to(self.device)
        self.suite = self._get_suite()
        self.train_set = self._subset(train_data if train_data is not None else self._split("train", required=True))
        self.val_set = val_data if val_data is not None else self._split(self.cfg.val_split, required=False)
        self._prepare_model()
        self.ctx = self._build_context()
        self.params = self._select_trainable()
        self.optimizer = self._build_optimizer()
        self._schedule_lengths()
        self.ctx.steps_per_epoch = self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_schedule(self.warmup_steps, self.total_steps, self.method.min_lr_factor(self.cfg)))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self._eval_head: torch.Tensor | None = None
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._resume_if_asked()
        self.weight_limits = self._weight_limits()
        self.ctx.refresh_head()
        if self.ctx.frozen is not None:
            self.ctx.frozen.head.copy_(self.ctx.build_head(model=self.frozen_model))
        self.method.setup(self.ctx)
        self._write_run_config()

    # ------------------------------------------------------------------ setup

    def _check_run_dir(self) -> None:
        latest = ckpt.latest_checkpoint(self.run_dir)
        has_config = (self.run_dir / "config.json").is_file()
        if not self.cfg.resume and (latest is not None or has_config):
            raise UserError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose a new --out")
        if self.cfg.resume and has_config:
            saved = ckpt.load_run_config(self.run_dir)
            diffs = identity_diff(saved, self.cfg.to_dict())
            if diffs:
                key = diffs[0]
                raise UserError(f"--resume: config key '{key}' differs from the saved run ({saved.get(key)!r} vs "
                                f"{getattr(self.cfg, key)!r}); use the saved settings or a new --out")

    def _load_base(self):
        from grace_bench.models.checkpoints import load_checkpoint

        return load_checkpoint(self.cfg.base, trust_pickle=self.cfg.trust_pickle)

    def _get_suite(self):
        from grace_bench.data.suites import get_suite

        return get_suite(self.cfg.suite)

    def _split(self, split: str, *, required: bool) -> Dataset | None:
        from grace_bench.data.suites import DataContext

        root = Path(self.cfg.data_root) if self.cfg.data_root else None
        ctx = DataContext(root=root, preprocess=self.clip.preprocess, image_size=self.clip.image_size)
        try:
            return self.suite.train_split(ctx, split)
        except UserError:
            if required:
                raise
            self._print(f"note: suite '{self.suite.name}' has no '{split}' split; periodic validation is off")
            return None

    def _subset(self, data: Dataset) -> Dataset:
        n = self.cfg.max_train_samples
        if n is None or n >= len(data):
            return data
        idx = epoch_order(self.cfg.seed, -1, len(data))[:n].sort().values.tolist()
        return Subset(data, idx)

    def _prepare_model(self) -> None:
        model = self.clip.model
        self.frozen_model: nn.Module | None = None
        if self.method.needs_frozen:
            self.frozen_model = copy.deepcopy(model).eval()
            for p in self.frozen_model.parameters():
                p.requires_grad_(False)
        self.lora_config: LoRAConfig | None = None
        if self.cfg.lora_rank > 0:
            towers = self.cfg.lora_towers or [t for t in self.method.towers if t in ("vision", "text")]
            self.lora_config = LoRAConfig(rank=self.cfg.lora_rank, alpha=self.cfg.lora_alpha,
                                          dropout=self.cfg.lora_dropout, targets=tuple(self.cfg.lora_targets),
                                          towers=tuple(towers), split_qkv=bool(self.cfg.lora_split_qkv),
                                          scaling=self.cfg.lora_scaling or "standard")
            apply_lora(model, self.lora_config)
        if self.cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)

    def _build_context(self) -> TrainContext:
        classnames = list(self.suite.classnames)
        eval_templates = list(self.suite.templates)
        train_templates = self.method.train_templates(eval_templates)
        placeholder = torch.zeros(1, len(classnames))
        classifier = ZeroShotClassifier(self.clip.model, placeholder, self.clip.mean, self.clip.std).to(self.device)
        frozen = None
        if self.frozen_model is not None:
            frozen = ZeroShotClassifier(self.frozen_model, placeholder, self.clip.mean, self.clip.std).to(self.device)
        ctx = TrainContext(clip=self.clip, classifier=classifier, config=self.cfg, device=self.device,
                           classnames=classnames, eval_templates=eval_templates, train_templates=train_templates,
                           hparams=self.method.hparams, dist=self.dist, frozen=frozen)
        head = ctx.build_head()
        classifier.head = head.to(self.device)
        if frozen is not None:
            frozen.head = head.clone().to(self.device)
        return ctx

    def _select_trainable(self) -> list[nn.Parameter]:
        model = self.clip.model
        for p in model.parameters():
            p.requires_grad_(False)
        named = self.method.trainable_parameters(self.ctx)
        if not named:
            raise UserError(f"method '{self.method.name}' selected no trainable parameters; check --lora-towers")
        for _, p in named:
            p.requires_grad_(True)
        self.param_names = [n for n, _ in named]
        return [p for _, p in named]

    def _build_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in zip(self.param_names, self.params):
            (no_decay if p.ndim < 2 or tower_of(name) == "logit" else decay).append(p)
        groups = [{"params": decay, "weight_decay": float(self.cfg.weight_decay)},
                  {"params": no_decay, "weight_decay": 0.0}]
        return self.method.build_optimizer([g for g in groups if g["params"]], self.cfg)

    def _schedule_lengths(self) -> None:
        n = len(self.train_set)
        bs = int(self.cfg.batch_size)
        if bs % self.dist.world_size:
            raise UserError(f"config key 'batch_size' ({bs}) must be divisible by the {self.dist.world_size} "
                            "processes; it is the global batch")
        if n < bs:
            raise UserError(f"config key 'batch_size' ({bs}) exceeds the {n} training images; lower --batch-size")
        self.steps_per_epoch = n // bs
        if self.cfg.max_steps is not None:
            self.total_steps = int(self.cfg.max_steps)
        else:
            self.total_steps = max(1, math.ceil(float(self.cfg.epochs) * self.steps_per_epoch))
        self.warmup_steps = int(self.cfg.warmup_steps)
        self.warmup_note = None
        if self._warmup_is_default and self.warmup_steps > self.total_steps // 2:
            # A default warmup sized for a longer run (the paper's ImageNet one) would keep the lr near 0 throughout.
            whose = "suite's" if self.cfg.sources.get("warmup_steps", "").startswith("suite") else "method's"
            self.warmup_steps = max(1, self.total_steps // 10)
            self.warmup_note = (f"the {whose} default warmup ({self.cfg.warmup_steps} steps) exceeds half of this "
                                f"{self.total_steps}-step run; using {self.warmup_steps} (10%); set --warmup-steps "
                                "to override")
            self._print(f"note: {self.warmup_note}")

    def _resume_if_asked(self) -> None:
        if not self.cfg.resume:
            return
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is None:
            self._print(f"note: --resume but {self.run_dir} has no checkpoint yet; starting from step 0")
            return
        state = ckpt.load_trainer_state(latest)
        model_state = ckpt.load_tensors(latest / ckpt.MODEL_FILE)
        adapters = ckpt.load_tensors(latest / ckpt.ADAPTER_FILE) if self.lora_config is not None else None
        try:
            self._restore(state, model_state, adapters)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--resume: checkpoint {latest} does not fit this run ({type(exc).__name__}: {text}); "
                            f"delete {latest} to resume from the previous checkpoint, or start a new --out") \
                from None
        self.last_checkpoint = latest
        self._truncate_log(self.step)
        self._print(f"resumed {self.run_dir} at step {self.step}/{self.total_steps} from {latest.name}")

    def _restore(self, state: dict[str, Any], model_state: dict[str, torch.Tensor],
                 adapters: dict[str, torch.Tensor] | None) -> None:
        """Load a checkpoint's weights, optimiser, schedule, RNG and method state (raises on any mismatch)."""
        model = self.clip.model
        with torch.no_grad():
            if adapters is not None:
                load_lora_state_dict(model, adapters)
                adapted = set(lora_layers(model))
                own = dict(model.named_parameters()) | dict(model.named_buffers())
                for key, value in model_state.items():
                    if key not in adapted:
                        own[key].copy_(value)
            else:
                model.load_state_dict(model_state, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        if isinstance(rng, list):
            rng = rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0]
        ckpt.restore_rng_state(rng)
        self.method.load_state_dict(state.get("method", {}))
        self.step = int(state["step"])
        history = state.get("history", [])
        if not isinstance(history, list):
            raise TypeError("'history' is not a list")
        self.history = list(history)

    def _weight_limits(self) -> torch.Tensor:
        """Per trainable tensor: the max |w| beyond which an update counts as diverged (see WEIGHT_GROWTH)."""
        return WEIGHT_GROWTH * _max_abs(self.params).clamp_min(1.0)

    def _write_run_config(self) -> None:
        if not self.dist.is_main:
            return
        atomic_write_json(self.run_dir / "config.json", self.config_record())

    def config_record(self) -> dict[str, Any]:
        """The fully resolved config.json: every config field plus what was derived from it."""
        import open_clip

        rec = self.cfg.to_dict()
        rec.update({
            "arch": self.clip.arch,
            "method_config": self.method.config_record(),
            "lora": self.lora_config.to_dict() if self.lora_config else None,
            "head_transform": self.method.head_transform(),
            "trainable": {"tensors": len(self.params), "numel": int(sum(p.numel() for p in self.params))},
            "train_size": len(self.train_set),
            "val_size": None if self.val_set is None else len(self.val_set),
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup_steps_effective": self.warmup_steps,
            "warmup_note": self.warmup_note,
            "world_size": self.dist.world_size,
            "train_templates": self.ctx.train_templates,
            "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "runtime": runtime_info()},
        })
        return rec

    # ------------------------------------------------------------------ loop

    def run(self, *, stop_at_step: int | None = None) -> TrainResult:
        """Train until ``total_steps`` (or ``stop_at_step``); returns a ``TrainResult``."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"finetune {cfg.method}", unit="step",
                   disable=not (cfg.progress and self.dist.is_main), dynamic_ncols=True)
        pending: list[dict[str, torch.Tensor]] = []
        t_last, steps_since = time.perf_counter(), 0
        saved_at = self.step if self.last_checkpoint is not None else -1
        try:
            while self.step < self.total_steps:
                epoch, pos = divmod(self.step, self.steps_per_epoch)
                for images, labels in self._epoch_batches(epoch, pos):
                    if self.step >= self.total_steps:
                        break
                    logs = self._train_step(images, labels)
                    self.step += 1
                    steps_since += 1
                    pending.append(logs)
                    bar.update(1)
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        now = time.perf_counter()
                        rec = self._log_train(pending, steps_since, now - t_last, epoch)
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                        img_s=f"{rec['images_per_s']:.0f}")
                        pending, t_last, steps_since = [], now, 0
                    if self._due(cfg.eval_every, end_of_epoch) and self.step < self.total_steps:
                        self._validate()
                    if self._due(cfg.save_every, end_of_epoch) and self.step < self.total_steps:
                        self._save()
                        saved_at = self.step
                    if stop_at_step is not None and self.step >= stop_at_step:
                        return self._result()
            val = self._validate()
            if saved_at != self.step:
                self._save()
            self._log({"event": "done", "step": self.step, "val_acc": val})
            return self._result()
        finally:
            bar.close()

    def _due(self, every: int, end_of_epoch: bool) -> bool:
        return (self.step % every == 0) if every > 0 else end_of_epoch

    def _epoch_batches(self, epoch: int, start_batch: int):
        order = epoch_order(self.cfg.seed, epoch, len(self.train_set))
        bs = int(self.cfg.batch_size)
        batches = [self.dist.shard(order[b * bs:(b + 1) * bs].tolist())
                   for b in range(start_batch, self.steps_per_epoch)]
        yield from self._iterate(self.train_set, batches)

    def _iterate(self, data: Dataset, batches: list[list[int]]):
        """Yield ``(images, labels)`` for each list of indices (direct indexing for in-memory tensors)."""
        if isinstance(data, TensorDataset):
            for idx in batches:
                t = torch.as_tensor(idx, dtype=torch.long)
                yield data.tensors[0][t], data.tensors[1][t]
            return
        yield from DataLoader(data, batch_sampler=batches, num_workers=self.cfg.num_workers,
                              pin_memory=self.device.type == "cuda")

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(self.device, non_blocking=True).float()
        labels = torch.as_tensor(labels).to(self.device, non_blocking=True).long()
        self.clip.model.train()
        for p in self.params:
            p.grad = None
        with self.ctx.autocast():
            loss, logs = self.method.loss(self.ctx, (images, labels), self.step)
        loss.backward()
        reported = logs.pop("loss", loss).detach().float().reshape(1)
        self.dist.average_gradients(self.params, extra=[reported])
        max_norm = float(self.cfg.grad_clip) if self.cfg.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not bool(torch.isfinite(reported).all() & torch.isfinite(gnorm)):
            self._non_finite(reported, gnorm)
        self.optimizer.step()
        self._check_weights()
        self._last_batch = (images, labels)
        self.scheduler.step()
        self.method.after_step(self.ctx, self.step + 1)
        out = {"loss": reported[0], "grad_norm": gnorm.detach().float()}
        out.update({k: v.detach().float().reshape(()) for k, v in logs.items()})
        return out

    def _non_finite(self, loss: torch.Tensor, gnorm: torch.Tensor) -> None:
        what = f"loss {loss.item()}" if not torch.isfinite(loss).all() else f"gradient norm {gnorm.item()}"
        self._stop(f"{what} is not finite")

    def _check_weights(self) -> None:
        """Stop if the update just made left a trainable tensor non-finite or far beyond its starting size."""
        size = _max_abs(self.params)
        ok = size <= self.weight_limits  # False for NaN as well
        if bool(ok.all()):
            return
        i = int((~ok).nonzero()[0])
        self._stop(f"the update diverged: {self.param_names[i]} reached max |w| = {size[i].item():.3g} "
                   f"(limit {self.weight_limits[i].item():.3g})")

    def _stop(self, what: str) -> None:
        """Log the event and raise ``NonFiniteLossError`` naming the last good checkpoint."""
        kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint yet"
        self._log({"event": "non_finite", "step": self.step, "what": what})
        raise NonFiniteLossError(f"training stopped at step {self.step}: {what} ({kept}); "
                                 "lower --lr or --grad-clip and start a new run")

    @torch.no_grad()
    def _check_before_save(self) -> None:
        """Refuse to save weights that are not finite or give a non-finite loss on the last training batch.

        Uses the clean cross-entropy of the training head in eval mode (no dropout, no RNG draws, so saving
        does not change the trajectory); every rank checks its own shard and all agree on the outcome.
        """
        model = self.clip.model
        flags = torch.zeros(2, device=self.device)
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        flags[0] = (~torch.stack([torch.isfinite(t).all() for t in tensors])).sum().float()
        loss = torch.zeros((), device=self.device)
        if self._last_batch is not None:
            images, labels = self._last_batch
            was_training = model.training
            model.eval()
            try:
                with self.ctx.autocast():
                    loss = torch.nn.functional.cross_entropy(self.ctx.classifier(images).float(), labels)
            finally:
                model.train(was_training)
            flags[1] = (~torch.isfinite(loss)).float()
        flags = self.dist.all_reduce_sum(flags)
        if flags[0] > 0:
            self._stop(f"the weights after step {self.step} are not finite; not saving them")
        if flags[1] > 0:
            self._stop(f"the weights after step {self.step} give a non-finite loss on the last batch; not saving "
                       "them")

    # ------------------------------------------------------------------ logging, validation, saving

    def _log_train(self, pending: list[dict[str, torch.Tensor]], steps: int, seconds: float, epoch: int
                   ) -> dict[str, Any]:
        keys = sorted(set().union(*[p.keys() for p in pending]))
        means = torch.stack([torch.stack([p[k] for p in pending if k in p]).mean() for k in keys])
        self.dist.all_reduce_mean_([means])
        rec: dict[str, Any] = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4)}
        rec.update(dict(zip(keys, means.tolist())))
        rec["lr"] = float(self.optimizer.param_groups[0]["lr"])
        rec["images_per_s"] = steps * int(self.cfg.batch_size) / max(seconds, 1e-9)
        self._log(rec)
        return rec

    def _log(self, rec: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        rec = {"time": time.time(), **rec}
        self.history.append(rec)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop log records written after ``step`` by the run that was killed (they will be redone).

        A torn last line (the kill) is dropped; any other unreadable line is a UserError naming it.
        """
        path = self.run_dir / "log.jsonl"
        if not path.is_file():
            return
        fix = "it is only a record (the checkpoints hold the training state): move it aside and resume again"
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--resume: cannot read {path} as text ({type(exc).__name__}); {fix}") from None
        keep = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            rec = _log_record(line)
            if rec is None:
                if number == len(lines):
                    continue  # a torn last line from the kill
                raise UserError(f"--resume: {path} line {number} is not a JSON record with an integer 'step'; {fix}")
            if rec.get("step", 0) <= step:
                keep.append(line)
        if self.dist.is_main:  # every rank read and checked it, so a bad log stops all of them alike
            atomic_write_text(path, "".join(f"{line}\n" for line in keep))

    @torch.no_grad()
    def _validate(self) -> float | None:
        """Top-1 accuracy on the held-out split with the evaluation templates (sharded over ranks)."""
        if self.val_set is None:
            return None
        model = self.clip.model
        model.eval()
        try:
            classifier = self._eval_classifier()
            n = len(self.val_set) if self.cfg.val_max_samples is None else min(len(self.val_set),
                                                                                 self.cfg.val_max_samples)
            idx = list(range(self.dist.rank, n, self.dist.world_size))
            correct = torch.zeros(2, device=self.device)
            bs = max(1, int(self.cfg.batch_size) // self.dist.world_size)
            for images, labels in self._iterate(self.val_set, [idx[i:i + bs] for i in range(0, len(idx), bs)]):
                images = images.to(self.device).float()
                labels = torch.as_tensor(labels).to(self.device)
                with self.ctx.autocast():
                    pred = classifier(images).argmax(dim=1)
                correct[0] += (pred == labels).sum()
                correct[1] += labels.numel()
            total = self.dist.all_reduce_sum(correct)
            acc = float(total[0] / total[1].clamp_min(1))
        finally:
            model.train()
        self._log({"step": self.step, "val_acc": acc, "val_n": int(total[1])})
        return acc

    def _eval_classifier(self) -> ZeroShotClassifier:
        text_trains = any(tower_of(n) == "text" for n in self.param_names)
        if self._eval_head is None or text_trains:
            self._eval_head = self.ctx.build_head(self.ctx.eval_templates)
        return ZeroShotClassifier(self.clip.model, self._eval_head, self.clip.mean, self.clip.std).to(self.device)

    def _save(self) -> None:
        self._check_before_save()
        rngs = ckpt.capture_rng_state()
        if self.dist.enabled:
            import torch.distributed as tdist

            gathered: list[Any] = [None] * self.dist.world_size
            tdist.all_gather_object(gathered, rngs)
            rngs = gathered
        if self.dist.is_main:
            state = {
                "step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "batch_in_epoch": self.step % self.steps_per_epoch,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rngs,
                "method": self.method.state_dict(),
                "history": self.history,
                "world_size": self.dist.world_size,
            }
            meta = {"arch": self.clip.arch, "method": self.cfg.method, "step": str(self.step),
                    "base": str(self.cfg.base), "format": "open_clip"}
            adapters = lora_state_dict(self.clip.model) if self.lora_config is not None else None
            self.last_checkpoint = ckpt.save_checkpoint(
                self.run_dir, self.step, model_state=merge(self.clip.model), trainer_state=_jsonable_history(state),
                config=self.config_record(), adapters=adapters, metadata=meta, keep_last=int(self.cfg.keep_last))
        self.dist.barrier()
        if not self.dist.is_main:
            self.last_checkpoint = ckpt.latest_checkpoint(self.run_dir)

    def _result(self) -> TrainResult:
        val = next((r["val_acc"] for r in reversed(self.history) if "val_acc" in r and r["val_acc"] is not None),
                   None)
        return TrainResult(run_dir=self.run_dir, step=self.step, total_steps=self.total_steps,
                           last_checkpoint=self.last_checkpoint, val_acc=val, history=list(self.history))

    def _print(self, msg: str) -> None:
        if self.dist.is_main:
            from tqdm.auto import tqdm

            tqdm.write(msg)


@torch.no_grad()
def _max_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |w| of each tensor as one float vector (NaN where a tensor holds a NaN); one fused pass."""
    detached = [t.detach() for t in tensors]
    if hasattr(torch, "_foreach_norm"):
        return torch.stack(torch._foreach_norm(detached, float("inf"))).float()
    return torch.stack([t.abs().amax().float() for t in detached])


def _log_record(line: str) -> dict[str, Any] | None:
    """One parsed log.jsonl line, or None when it is not an object with an integer ``step`` (if any)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict):
        return None
    step = rec.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    return rec


def _jsonable_history(state: dict[str, Any]) -> dict[str, Any]:
    """``weights_only`` loading accepts only plain containers: stringify any odd values in the history."""
    state = dict(state)
    state["history"] = [json.loads(json.dumps(r, default=str)) for r in state["history"]]
    return state

