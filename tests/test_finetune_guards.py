"""The divergence guard: a huge lr stops the run, and no wrecked or non-finite checkpoint is ever kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grace_bench.errors import NonFiniteLossError
from grace_bench.finetune import checkpointing as ckpt
from grace_bench.finetune.methods import register_method
from grace_bench.finetune.methods.ft import FT

from .test_trainer import cfg_for, run, tiny_data


def _checkpoint_loss(run_dir, ckpt_dir, data) -> float:
    """Reload a checkpoint as the rest of the toolkit does and take its clean CE on a batch."""
    from grace_bench.data.micro import MICRO_CLASSNAMES, MICRO_TEMPLATES
    from grace_bench.models.checkpoints import load_checkpoint
    from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head

    clip = load_checkpoint(str(run_dir))
    clip.model.load_state_dict(ckpt.load_tensors(ckpt_dir / ckpt.MODEL_FILE))
    model = clip.model.eval()
    head = build_zero_shot_head(model, clip.tokenizer, MICRO_CLASSNAMES, MICRO_TEMPLATES)
    clf = ZeroShotClassifier(model, head, clip.mean, clip.std).eval()
    x, y = data.tensors
    with torch.no_grad():
        return F.cross_entropy(clf(x[:8]), y[:8]).item()


def _assert_every_kept_checkpoint_is_sane(run_dir, data) -> None:
    for _, path in ckpt.list_checkpoints(run_dir):
        weights = ckpt.load_tensors(path / ckpt.MODEL_FILE)
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), path
        assert torch.isfinite(torch.tensor(_checkpoint_loss(run_dir, path, data))), path


class _StillForTwoSteps(FT):
    """Zero gradients for the first two steps (AdamW then leaves the weights alone), then the real loss."""

    name = "_test-still-two"

    def loss(self, ctx, batch, step):
        loss, logs = super().loss(ctx, batch, step)
        return (loss * 0.0 if step < 2 else loss), logs


def test_huge_lr_stops_at_the_diverging_update_and_keeps_the_last_sane_checkpoint(tmp_path):
    register_method(_StillForTwoSteps)
    data = tiny_data()
    cfg = cfg_for(tmp_path, method="_test-still-two", lr=1e30, weight_decay=0.0, warmup_steps=0, save_every=1,
                  max_steps=5)
    with pytest.raises(NonFiniteLossError) as err:
        run(cfg, data=data)
    _assert_every_kept_checkpoint_is_sane(tmp_path / "run", data)
    assert [s for s, _ in ckpt.list_checkpoints(cfg.out)] == [1, 2]
    assert "\n" not in str(err.value) and "step_000002" in str(err.value)
    assert "step 2: the update diverged: " in str(err.value) and "reached max |w|" in str(err.value)
    published = ckpt.load_tensors(tmp_path / "run" / "model.safetensors")
    kept = ckpt.load_tensors(ckpt.latest_checkpoint(cfg.out) / ckpt.MODEL_FILE)
    assert all(torch.equal(published[k], kept[k]) for k in kept)


class _BreaksFrozenWeightsAtTwo(FT):
    """Corrupts a frozen (non-trainable) tensor after step 2: the trainable weights stay sane."""

    name = "_test-break-frozen"

    def after_step(self, ctx, step):
        if step == 2:
            with torch.no_grad():
                ctx.model.visual.conv1.weight.fill_(float("nan"))


def test_nothing_non_finite_is_saved_even_if_the_trainable_weights_look_fine(tmp_path):
    register_method(_BreaksFrozenWeightsAtTwo)
    data = tiny_data()
    cfg = cfg_for(tmp_path, method="_test-break-frozen", lora_rank=2, save_every=1, max_steps=4)
    with pytest.raises(NonFiniteLossError) as err:
        run(cfg, data=data)
    _assert_every_kept_checkpoint_is_sane(tmp_path / "run", data)
    assert [s for s, _ in ckpt.list_checkpoints(cfg.out)] == [1]
    assert "weights after step 2 are not finite; not saving them" in str(err.value)


def test_cli_huge_lr_is_one_line_exit_2_and_keeps_no_wrecked_checkpoint(tmp_path, capsys):
    from grace_bench.cli import main
    from grace_bench.data.micro import micro_dataset

    out = tmp_path / "wreck"
    code = main(["finetune", "--method", "ft", "--lr", "1e30", "--max-steps", "3", "--save-every", "1",
                 "--batch-size", "8", "--out", str(out), "--no-progress", "--num-workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    _assert_every_kept_checkpoint_is_sane(out, micro_dataset("micro", "val"))
    assert err[0].startswith("error: training stopped at step 0: the update diverged"), err
