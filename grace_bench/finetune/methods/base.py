"""The ``Method`` interface every fine-tuning method implements, and the ``TrainContext`` it receives.

A method says three things: which parameters train (``trainable_parameters``), its loss on a batch
(``loss``), and its hyperparameter defaults (``defaults``, each with the paper it comes from). The
trainer (``grace_bench.finetune.trainer``) owns everything else: optimiser, schedule, precision,
checkpoints, resume, DDP gradient averaging, logging and validation.

Contract for ``loss``:
  * ``batch`` is ``(images in [0, 1] (B, 3, H, W), labels (B,))`` already on ``ctx.device``; under DDP it is
    this rank's share of the global batch.
  * Return ``(loss, logs)``: a scalar to be back-propagated (a per-rank *mean*; the trainer averages gradients
    over ranks, DDP style) and a dict of detached scalar tensors to log (no ``.item()``: no host syncs).
  * The model is in ``train()`` mode. Inner maximisations (PGD, AWP) may call ``torch.autograd.grad`` freely;
    they must not leave gradients in ``.grad`` of trainable parameters (the trainer zeroes them anyway
    before the step's ``loss``; use ``ctx.no_param_grads()`` or ``autograd.grad`` w.r.t. inputs only).
  * Randomness: use ``ctx.generator(step)`` (seeded from the run seed, the step and the rank), so a resumed
    run draws the same numbers.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from grace_bench.errors import UserError
from grace_bench.models.lora import LoRAParametrization, lora_layers
from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head
from grace_bench.utils.parsing import parse_bool, parse_number

if TYPE_CHECKING:  # pragma: no cover
    from grace_bench.finetune.config import FinetuneConfig
    from grace_bench.finetune.distributed import DistInfo
    from grace_bench.models.clip_model import ClipModel

Batch = tuple[torch.Tensor, torch.Tensor]
# Top-level parameter-name prefixes of OpenCLIP's ``CLIP`` per tower (everything else is logit_scale/bias).
VISION_PREFIXES: tuple[str, ...] = ("visual.",)
TEXT_PREFIXES: tuple[str, ...] = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                                  "text_projection", "text.")
LOGIT_PARAMS: tuple[str, ...] = ("logit_scale", "logit_bias")


@dataclass(frozen=True)
class Hyper:
    """One method hyperparameter: its default ``value``, where that default comes from, and what it does."""

    value: Any
    source: str
    help: str = ""


def tower_of(name: str) -> str:
    """``vision``, ``text`` or ``logit`` for a full parameter name of an OpenCLIP ``CLIP`` model."""
    if name.startswith(VISION_PREFIXES):
        return "vision"
    if name.split(".")[0] in LOGIT_PARAMS:
        return "logit"
    return "text"


@dataclass
class TrainContext:
    """Everything a method needs during training.

    * ``clip``: the model being trained (LoRA already applied when ``config.lora_rank > 0``).
    * ``classifier``: a ``ZeroShotClassifier`` on ``clip.model`` whose head is built from the model's **own**
      text tower with the method's training templates (``Method.train_templates``); the head is a buffer,
      refresh it with ``refresh_head`` after the text tower changes (FLYP).
    * ``frozen``: a frozen copy of the initial model θ0 wrapped in a classifier with the same head, present
      when ``Method.needs_frozen`` (FARE, PMG-AFT). ``requires_grad`` is off and it stays in eval mode.
    * ``hparams``: the method's resolved hyperparameters (defaults overridden by the config's method args).
    * ``lora``: ``{name: LoRAParametrization}`` (empty without LoRA); GRACE hangs its AWP term on these.
    * ``steps_per_epoch``: optimiser steps per epoch (set by the trainer once the schedule is known).
    * ``head_transform``: applied to every head ``build_head`` returns (LAAT's anchor expansion), or None.
    """

    clip: ClipModel
    classifier: ZeroShotClassifier
    config: FinetuneConfig
    device: torch.device
    classnames: list[str]
    eval_templates: list[str]
    train_templates: list[str]
    hparams: dict[str, Any]
    dist: DistInfo
    frozen: ZeroShotClassifier | None = None
    state: dict[str, Any] = field(default_factory=dict)
    steps_per_epoch: int = 0
    head_transform: dict[str, Any] | None = None

    @property
    def model(self) -> nn.Module:
        """The OpenCLIP model being trained (same object as ``clip.model``)."""
        return self.clip.model

    @property
    def lora(self) -> dict[str, LoRAParametrization]:
        return lora_layers(self.clip.model)

    def generator(self, step: int, stream: int = 0) -> torch.Generator:
        """A generator on ``device`` seeded by (run seed, step, rank, stream): reproducible across resume."""
        g = torch.Generator(device=self.device)
        seed = (int(self.config.seed) * 1_000_003 + int(step) * 7919 + self.dist.rank * 104_729 + stream * 15_485_863)
        g.manual_seed(seed % (2**63 - 1))
        return g

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when ``config.precision == "bf16"``, else a no-op context."""
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def build_head(self, templates: Sequence[str] | None = None, model: nn.Module | None = None, *,
                   raw: bool = False) -> torch.Tensor:
        """Class embeddings (D, C) from ``model``'s (default: the trained model's) own text tower.

        ``head_transform`` is applied unless ``raw``.
        """
        m = self.clip.model if model is None else model
        was_training = m.training
        m.eval()
        try:
            head = build_zero_shot_head(m, self.clip.tokenizer, self.classnames,
                                        list(templates or self.train_templates), device=self.device)
        finally:
            m.train(was_training)
        head = head.float()
        if self.head_transform is not None and not raw:
            from grace_bench.models.head_transform import apply_head_transform

            head = apply_head_transform(head, self.head_transform)
        return head

    def refresh_head(self, templates: Sequence[str] | None = None) -> None:
        """Rebuild ``classifier.head`` in place from the current text tower (training templates by default)."""
        self.classifier.head.copy_(self.build_head(templates))

    def eval_classifier(self) -> ZeroShotClassifier:
        """A classifier with the *evaluation* templates from the current text tower (what ``eval`` will see)."""
        head = self.build_head(self.eval_templates)
        return ZeroShotClassifier(self.clip.model, head, self.clip.mean, self.clip.std).to(self.device)

    def pgd(self, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int, *,
            loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, **overrides: Any) -> torch.Tensor:
        """PGD adversarial images for ``classifier`` using the method's ``eps``/``pgd_steps``/``pgd_step_size``.

        Runs with the model in eval mode (no LoRA dropout inside the attack), restores the mode, and leaves
        no gradients on parameters.
        """
        from grace_bench.attacks.pgd import pgd_attack

        kwargs = {
            "eps": self.hparams["eps"], "steps": int(self.hparams["pgd_steps"]),
            "step_size": self.hparams["pgd_step_size"], "norm": "Linf", "random_start": True,
            "generator": self.generator(step, stream=1),
        }
        kwargs.update(overrides)
        model = self.clip.model
        was_training = model.training
        model.eval()
        try:
            with self.no_param_grads():
                x_adv = pgd_attack(classifier, x, y, loss_fn=loss_fn, **kwargs)
        finally:
            model.train(was_training)
        return x_adv.detach()

    @contextlib.contextmanager
    def no_param_grads(self) -> Iterator[None]:
        """Temporarily switch off ``requires_grad`` on trainable parameters (cheaper inner maximisation)."""
        params = [p for p in self.clip.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)


class Method:
    """Base class of fine-tuning methods. Subclasses set ``name`` and ``defaults`` and implement ``loss``.

    Class attributes:
      * ``name``: registry name (``ft``, ``flyp``, ``tecoa``, ``fare``, ``pmg-aft``, ``grace``).
      * ``defaults``: ``{key: Hyper(value, source, help)}``; every key can be overridden from the config
        (``method_args``) or from the CLI flag ``--<key-with-dashes>``.
      * ``trainer_defaults``: the paper's ``lr``, ``weight_decay``, ``batch_size``, ``epochs`` or ``max_steps``,
        ``warmup_steps`` (used for every trainer setting the user leaves unset).
      * ``towers``: which towers train without LoRA (``vision``, ``text``, ``logit``); with LoRA only the
        adapter factors inside those towers train.
      * ``needs_frozen``: build ``ctx.frozen`` (a frozen θ0 classifier).
      * ``template_kind``: ``"suite"`` (the suite's evaluation templates) or ``"single"`` (the single training
        template ``This is a photo of a {}``) for the training head.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Hyper]] = {}
    trainer_defaults: ClassVar[dict[str, Hyper]] = {}
    towers: ClassVar[tuple[str, ...]] = ("vision",)
    needs_frozen: ClassVar[bool] = False
    template_kind: ClassVar[str] = "suite"
    description: ClassVar[str] = ""

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        self.hparams = self.resolve_hparams(hparams or {})

    @classmethod
    def resolve_hparams(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``overrides``; an unknown key or a value of the wrong type is a UserError."""
        out = {k: h.value for k, h in cls.defaults.items()}
        for key, value in overrides.items():
            if key not in cls.defaults:
                known = ", ".join(sorted(cls.defaults)) or "none"
                close = difflib.get_close_matches(str(key), list(cls.defaults), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise UserError(f"method_args.{key}: method '{cls.name}' has no such setting; {hint}known: {known}")
            out[key] = coerce_like(cls.defaults[key].value, value, f"method_args.{key}")
        return out

    @classmethod
    def describe_defaults(cls) -> dict[str, dict[str, Any]]:
        """``{key: {"value", "source", "help"}}``: the defaults with their provenance (written to config.json)."""
        return {k: {"value": h.value, "source": h.source, "help": h.help} for k, h in cls.defaults.items()}

    def train_templates(self, suite_templates: Sequence[str]) -> list[str]:
        """Templates of the training head: the suite's or the single template."""
        if self.template_kind == "single":
            from grace_bench.data.micro_text import SINGLE_TEMPLATE

            return [SINGLE_TEMPLATE]
        return list(suite_templates)

    def trainable_parameters(self, ctx: TrainContext) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs to optimise: LoRA factors in ``towers`` with LoRA, else whole towers."""
        model = ctx.clip.model
        if ctx.config.lora_rank > 0:
            out = []
            for name, layer in lora_layers(model).items():
                if tower_of(name) in self.towers:
                    out += [(f"{name}.lora_A", layer.lora_A), (f"{name}.lora_B", layer.lora_B)]
            if "logit" in self.towers:
                out += [(n, p) for n, p in model.named_parameters() if tower_of(n) == "logit"]
            return out
        return [(n, p) for n, p in model.named_parameters()
                if tower_of(n) in self.towers and ".parametrizations." not in n]

    def setup(self, ctx: TrainContext) -> None:
        """Called once after the context is built (and after resume state is loaded). Default: nothing."""

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss on ``batch`` at optimiser step ``step`` and detached scalars to log."""
        raise NotImplementedError

    def build_optimizer(self, groups: list[dict[str, Any]], config: FinetuneConfig) -> torch.optim.Optimizer:
        """The optimiser over the trainer's parameter ``groups`` (with and without weight decay). Default: AdamW."""
        return torch.optim.AdamW(groups, lr=float(config.lr), betas=tuple(config.adam_betas),
                                 eps=float(config.adam_eps))

    def min_lr_factor(self, config: FinetuneConfig) -> float:
        """Where the cosine schedule ends, as a fraction of the peak lr. Default: 0 (decay to 0)."""
        return 0.0

    def head_transform(self) -> dict[str, Any] | None:
        """A transform every zero-shot head of the trained model must get (``models.head_transform``), or None.

        The trainer records it in ``config.json`` and ``eval`` applies it to every head it builds for the run.
        """
        return None

    def after_step(self, ctx: TrainContext, step: int) -> None:
        """Called after each optimiser step (e.g. FLYP refreshes its head, GRACE updates its curriculum)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state to checkpoint (tensors, numbers, strings, lists, dicts only). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def config_record(self) -> dict[str, Any]:
        """What goes to config.json under ``method_config``: resolved values and their sources."""
        return {
            "name": self.name, "towers": list(self.towers), "template_kind": self.template_kind,
            "hparams": dict(self.hparams), "defaults": self.describe_defaults(),
            "trainer_defaults": {k: {"value": h.value, "source": h.source} for k, h in self.trainer_defaults.items()},
        }


def coerce_like(default: Any, value: Any, key: str) -> Any:
    """Convert ``value`` to the type of ``default`` (bool/int/float/str/list); UserError naming ``key`` if it fails.

    Floats also accept fraction strings such as ``"4/255"``.
    """
    try:
        if isinstance(default, bool):
            return parse_bool(value)
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return parse_number(value)
        if isinstance(default, (list, tuple)):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return list(value)
        if default is None or isinstance(default, str):
            return value if default is None else str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise UserError(f"{key}: cannot use {value!r}; expected a {type(default).__name__} like {default!r}")
