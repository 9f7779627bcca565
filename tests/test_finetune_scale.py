"""Fine-tuning at scale: a ViT-B/32-shaped model in bf16 with gradient checkpointing, and a global batch and lr
schedule that do not depend on the world size.

"ViT-B/32-shaped": OpenCLIP's ViT-B/32 geometry (224 px input, 32 px patches so 7x7+1 tokens, 12 vision and 12
text layers, 77-token context, the real tokenizer) with the width shrunk from 768/512 to 64 (2 heads) so a step
takes a second on a CPU. Depth, token counts and the checkpointed code path are those of the real model.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from grace_bench.errors import UserError
from grace_bench.finetune.distributed import DistInfo
from grace_bench.finetune.trainer import Trainer, cosine_schedule, train

from .test_trainer import cfg_for, fresh_clip, tiny_data

WIDTH = 64  # ViT-B/32: 768 (vision) and 512 (text); shrunk for a CPU


def vit_b32_shaped():
    """A randomly initialised OpenCLIP CLIP with ViT-B/32's depth, patch and image size, narrowed to WIDTH."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import CLIP

    from grace_bench.models.loading import clip_from_open_clip

    torch.manual_seed(0)
    model = CLIP(embed_dim=WIDTH,
                 vision_cfg=dict(image_size=224, patch_size=32, layers=12, width=WIDTH, head_width=WIDTH // 2),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=WIDTH, heads=2, layers=12))
    model.visual.preprocess_cfg = {"size": 224, "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}
    return clip_from_open_clip(model, arch="ViT-B-32-narrow", spec="ViT-B-32-narrow", tokenizer_name="ViT-B-32")


def images_224(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, 224, 224, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_vit_b32_shaped_step_runs_in_bf16_with_grad_checkpointing(tmp_path):
    clip = vit_b32_shaped()
    assert clip.image_size == 224 and len(clip.model.visual.transformer.resblocks) == 12
    data = images_224(8)
    res = train(cfg_for(tmp_path, "vitb32", max_steps=2, batch_size=4, precision="bf16", grad_checkpointing=True,
                        val_max_samples=4), clip=clip, train_data=data, val_data=data)
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert res.step == 2 and len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert clip.model.visual.transformer.grad_checkpointing


def test_vit_b32_shaped_grad_checkpointing_gives_the_same_gradients():
    """fp32: recomputing the activations in backward changes no gradient (vision and text towers)."""
    from grace_bench.models.zero_shot import ZeroShotClassifier

    clip = vit_b32_shaped()
    model = clip.model.train()
    head = torch.nn.functional.normalize(torch.randn(WIDTH, 10, generator=torch.Generator().manual_seed(1)), dim=0)
    clf = ZeroShotClassifier(model, head, clip.mean, clip.std)
    x, y = images_224(2).tensors
    tokens = clip.tokenizer(["a photo of a zero", "a photo of a seven"])
    block_calls = []
    mlp = model.visual.transformer.resblocks[5].mlp
    mlp_forward = mlp.forward
    mlp.forward = lambda h: (block_calls.append(1), mlp_forward(h))[1]  # counts forwards and recomputations

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(clf(x), y) + model.encode_text(tokens).pow(2).mean()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients(False)
    assert len(block_calls) == 1
    checkpointed = gradients(True)
    assert len(block_calls) == 3  # forward + recomputation in backward: checkpointing really ran
    assert plain.keys() == checkpointed.keys() and len(plain) > 100
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def _trainer_as_rank(monkeypatch, tmp_path, rank: int, world: int, **kw) -> Trainer:
    """A Trainer that believes it is ``rank`` of ``world`` (no process group: collectives are not reached)."""
    import torch.distributed as dist

    import grace_bench.finetune.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "init_distributed",
                        lambda device: (DistInfo(rank=rank, world_size=world), torch.device("cpu")))
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: None)
    cfg = cfg_for(tmp_path, f"w{world}r{rank}", **{"max_steps": None, "epochs": 3, "warmup_steps": 2, **kw})
    data = tiny_data(32)
    return Trainer(cfg, clip=fresh_clip(), train_data=data, val_data=data)


def _lrs(trainer: Trainer) -> list[float]:
    lrs = []
    for _ in range(trainer.total_steps):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    return lrs


def test_global_batch_and_lr_schedule_do_not_depend_on_the_world_size(monkeypatch, tmp_path):
    single = _trainer_as_rank(monkeypatch, tmp_path, 0, 1, batch_size=8)
    reference = [batch for batch in single._epoch_batches(1, 0)]
    expected_lrs = [1e-3 * cosine_schedule(2, 12)(s) for s in range(12)]
    assert (single.steps_per_epoch, single.total_steps) == (4, 12)
    assert _lrs(single) == pytest.approx(expected_lrs)
    for world in (2, 4):
        ranks = [_trainer_as_rank(monkeypatch, tmp_path, r, world, batch_size=8) for r in range(world)]
        for tr in ranks:
            assert (tr.steps_per_epoch, tr.total_steps, tr.warmup_steps) == (4, 12, 2)
            assert _lrs(tr) == pytest.approx(expected_lrs)  # no lr scaling with the number of processes
        per_rank = [list(tr._epoch_batches(1, 0)) for tr in ranks]
        for step, (images, labels) in enumerate(reference):
            parts = [per_rank[r][step] for r in range(world)]
            assert all(len(p[1]) == 8 // world for p in parts)  # each rank holds its share of the global batch
            assert torch.equal(torch.cat([p[0] for p in parts]), images)  # ... and together exactly the batch
            assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        assert ranks[0].config_record()["world_size"] == world


def test_global_batch_must_divide_among_the_processes(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="'batch_size' \\(6\\) must be divisible by the 4 processes"):
        _trainer_as_rank(monkeypatch, tmp_path, 0, 4, batch_size=6)
