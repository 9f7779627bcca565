"""The trainer: run-dir layout, resume bit-identity, NaN stop, config errors, schedule, precision options."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from grace_bench.data.suites import get_suite, register_suite
from grace_bench.errors import NonFiniteLossError, UserError
from grace_bench.finetune import checkpointing as ckpt
from grace_bench.finetune.config import FinetuneConfig, config_from_dict, load_config_file
from grace_bench.finetune.methods import get_method, register_method
from grace_bench.finetune.methods.ft import FT
from grace_bench.finetune.resolve import resolve_config
from grace_bench.finetune.trainer import cosine_schedule, epoch_order, train
from grace_bench.models.loading import build_clip_model


def tiny_data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))


def fresh_clip(seed: int = 0):
    torch.manual_seed(seed)
    return build_clip_model("tiny-clip")


def cfg_for(tmp_path, name="run", **kw) -> FinetuneConfig:
    base = dict(method="ft", base="tiny-clip", suite="micro", out=str(tmp_path / name), max_steps=6, batch_size=8,
                lr=1e-3, warmup_steps=2, log_every=1, progress=False, val_max_samples=16)
    base.update(kw)
    return FinetuneConfig(**base)


def run(cfg, *, stop_at_step=None, data=None):
    data = data or tiny_data()
    return train(cfg, clip=fresh_clip(), train_data=data, val_data=data, stop_at_step=stop_at_step)


def final_weights(run_dir):
    return ckpt.load_tensors(run_dir / "model.safetensors")


@pytest.mark.parametrize("kw", [
    dict(method="ft", lora_rank=2, lora_dropout=0.2),  # LoRA dropout draws from the global RNG: restored on resume
    dict(method="tecoa", max_steps=5, method_args={"pgd_steps": 1}),
    dict(method="advclip-lora", max_steps=5),  # the universal delta carried across batches is method state
], ids=["ft-lora-dropout", "tecoa-full", "advclip-lora-universal-delta"])
def test_resume_after_kill_is_bit_identical(tmp_path, kw):
    straight = run(cfg_for(tmp_path, "straight", **kw))
    # killed after step 3, one step past its last checkpoint (step 2): the resume replays step 3
    killed = cfg_for(tmp_path, "killed", save_every=2, **kw)
    first = run(killed, stop_at_step=3)
    assert first.step == 3 and not (tmp_path / "killed" / "model.safetensors").read_bytes() == b""
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed")] == [2]
    resumed = run(dataclasses.replace(killed, resume=True))
    assert resumed.step == straight.step
    a, b = final_weights(straight.run_dir), final_weights(resumed.run_dir)
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed log has each training step exactly once and the same losses as the straight run
    def losses(run_dir):
        recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in recs if "loss" in r]
    assert losses(resumed.run_dir) == losses(straight.run_dir)


def test_run_dir_layout_keep_last_and_loading(tmp_path):
    res = run(cfg_for(tmp_path, save_every=2, keep_last=2, max_steps=6))
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["arch"] == "tiny-clip" and cfg["base"] == "tiny-clip" and cfg["method"] == "ft"
    assert cfg["lr"] == 1e-3 and cfg["weight_decay"] == 0.1 and cfg["total_steps"] == 6
    assert cfg["method_config"]["trainer_defaults"]["weight_decay"]["source"].startswith("Wortsman")
    assert [s for s, _ in ckpt.list_checkpoints(res.run_dir)] == [4, 6]
    last = res.last_checkpoint
    assert {p.name for p in last.iterdir()} == {"model.safetensors", "trainer_state.pt", "config.json"}
    final = final_weights(res.run_dir)
    assert set(final) == set(fresh_clip().model.state_dict())
    for key, value in ckpt.load_tensors(last / "model.safetensors").items():
        assert torch.equal(final[key], value)
    # the run directory is a checkpoint spec the rest of the toolkit loads
    from grace_bench.models.checkpoints import load_checkpoint

    loaded = load_checkpoint(str(res.run_dir))
    assert loaded.arch == "tiny-clip"
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, final[key])
    recs = [json.loads(line) for line in (res.run_dir / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    assert len(train_recs) == 6 and all({"lr", "images_per_s", "grad_norm"} <= set(r) for r in train_recs)
    assert any("val_acc" in r for r in recs) and recs[-1]["event"] == "done"
    # the vision tower changed, the text tower did not (FT trains the vision tower only)
    start = fresh_clip().model.state_dict()
    assert not torch.equal(final["visual.conv1.weight"], start["visual.conv1.weight"])
    assert torch.equal(final["token_embedding.weight"], start["token_embedding.weight"])
    with pytest.raises(UserError, match="already holds a run"):
        run(cfg_for(tmp_path))


class _NaNAfterTwo(FT):
    name = "_test-nan"

    def loss(self, ctx, batch, step):
        loss, logs = super().loss(ctx, batch, step)
        return (loss * float("nan") if step >= 3 else loss), logs


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    register_method(_NaNAfterTwo)
    cfg = cfg_for(tmp_path, method="_test-nan", save_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss nan is not finite .*step_000002"):
        run(cfg)
    assert [s for s, _ in ckpt.list_checkpoints(cfg.out)] == [2]
    good = ckpt.load_tensors(ckpt.latest_checkpoint(cfg.out) / "model.safetensors")
    published = ckpt.load_tensors(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(good[k], published[k]) for k in good)
    assert all(torch.isfinite(v).all() for v in published.values() if v.is_floating_point())
    last = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "non_finite" and last["step"] == 3


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'lrr'; did you mean 'lr'"):
        config_from_dict({"lrr": 1})
    with pytest.raises(UserError, match="config key 'lr' must be a number"):
        resolve_config(config_from_dict({"lr": "fast"}), FT)
    with pytest.raises(UserError, match="config key 'batch_size' must be >= 1"):
        resolve_config(config_from_dict({"batch_size": 0}), FT)
    with pytest.raises(UserError, match="config key 'precision'"):
        resolve_config(config_from_dict({"precision": "fp8"}), FT)
    with pytest.raises(UserError, match="method_args.eps: method 'ft' has no such setting"):
        resolve_config(config_from_dict({"method_args": {"eps": 0.1}}), FT)
    with pytest.raises(UserError, match="method_args.pgd_steps: cannot use 'many'"):
        resolve_config(config_from_dict({"method": "tecoa", "method_args": {"pgd_steps": "many"}}),
                       get_method("tecoa"))
    with pytest.raises(UserError, match="unknown method 'sgd'"):
        get_method("sgd")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("method: fare\nsuite: imagenet\nlr: 2e-5\nmethod_args:\n  eps: 2/255\n")
    cfg = resolve_config(config_from_dict(load_config_file(yaml_file)), get_method("fare"))
    assert cfg.lr == 2e-5 and cfg.max_steps == 20000 and cfg.batch_size == 128  # FARE paper defaults fill the rest
    assert get_method("fare").resolve_hparams(cfg.method_args)["eps"] == pytest.approx(2 / 255)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot parse config file"):
        load_config_file(bad)


def test_cli_flags_override_config_file(tmp_path):
    import argparse

    from grace_bench.finetune.cli import add_finetune_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_finetune_parser(parser.add_subparsers())
    (tmp_path / "c.json").write_text(json.dumps({"method": "tecoa", "suite": "imagenet", "lr": 1e-4,
                                                 "batch_size": 64}))
    args = parser.parse_args(["finetune", "--config", str(tmp_path / "c.json"), "--lr", "3e-4", "--eps", "2/255",
                              "--method-arg", "pgd_steps=3", "--lora-rank", "8", "--lora-towers", "vision,text"])
    cfg = config_from_args(args)
    assert (cfg.method, cfg.lr, cfg.batch_size, cfg.lora_rank) == ("tecoa", 3e-4, 64, 8)
    assert cfg.method_args == {"eps": "2/255", "pgd_steps": 3}
    resolved = resolve_config(cfg, get_method("tecoa"))
    assert resolved.lora_towers == ["vision", "text"] and resolved.epochs == 10.0
    src = resolved.sources
    assert src["lr"] == src["method_args.eps"] == src["lora_rank"] == "command line"
    assert src["batch_size"] == src["method"] == f"--config {tmp_path / 'c.json'}"
    assert src["epochs"].startswith("method 'tecoa' default (Mao et al.") and src["seed"] == "built-in default"


def test_cosine_schedule_and_data_order():
    f = cosine_schedule(4, 20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(20) == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(epoch_order(3, 1, 50), epoch_order(3, 1, 50))
    assert not torch.equal(epoch_order(3, 1, 50), epoch_order(3, 2, 50))
    assert sorted(epoch_order(0, 0, 50).tolist()) == list(range(50))


def test_grad_checkpointing_matches_and_bf16_runs(tmp_path):
    plain = run(cfg_for(tmp_path, "plain", max_steps=2))
    gc = run(cfg_for(tmp_path, "gc", max_steps=2, grad_checkpointing=True))
    a, b = final_weights(plain.run_dir), final_weights(gc.run_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    bf = run(cfg_for(tmp_path, "bf16", max_steps=2, precision="bf16"))
    recs = [r for r in bf.history if "loss" in r]
    assert len(recs) == 2 and all(math.isfinite(r["loss"]) for r in recs)


def test_paper_warmup_longer_than_the_run_is_shortened_and_recorded(tmp_path):
    from grace_bench.finetune.trainer import Trainer

    data = tiny_data(16)
    register_suite("_test-no-training-defaults",
                   lambda: dataclasses.replace(get_suite("micro"), name="_test-no-training-defaults", training=None))
    tr = Trainer(cfg_for(tmp_path, "a", method="tecoa", suite="_test-no-training-defaults", warmup_steps=None,
                         max_steps=40), clip=fresh_clip(), train_data=data, val_data=data)
    assert tr.warmup_steps == 4 and "method's default warmup (1000 steps)" in tr.config_record()["warmup_note"]
    explicit = Trainer(cfg_for(tmp_path, "b", method="tecoa", warmup_steps=30, max_steps=40), clip=fresh_clip(),
                       train_data=data, val_data=data)
    assert explicit.warmup_steps == 30 and explicit.config_record()["warmup_note"] is None
    # micro's own warmup (6 steps, the study budget) is shortened the same way on a 4-step run
    short = Trainer(cfg_for(tmp_path, "c", method="tecoa", warmup_steps=None, max_steps=4), clip=fresh_clip(),
                    train_data=data, val_data=data)
    assert short.warmup_steps == 1 and "suite's default warmup (6 steps)" in short.config_record()["warmup_note"]
