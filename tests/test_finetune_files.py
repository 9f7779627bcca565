"""Files the finetune code reads back are untrusted (one-line errors); files it writes are atomic and umask-honest."""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import pytest
import torch

from grace_bench.errors import UserError
from grace_bench.finetune import checkpointing as ckpt
from grace_bench.finetune.config import config_from_dict, load_config_file
from grace_bench.finetune.methods import get_method
from grace_bench.finetune.resolve import resolve_config

from .test_trainer import cfg_for, run


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


@pytest.fixture
def killed_run(tmp_path):
    """A 4-step run killed after step 3 with checkpoints at steps 2 (and a config.json, log.jsonl)."""
    cfg = cfg_for(tmp_path, "killed", max_steps=4, save_every=2)
    run(cfg, stop_at_step=3)
    return dataclasses.replace(cfg, resume=True)


GARBLED_CONFIGS = {"syntax": b'{"method": "ft", ', "binary": b"\x00\xff\xfe\x93garbage", "list": b"[1, 2]",
                   "string": b'"ft"'}


@pytest.mark.parametrize("kind", list(GARBLED_CONFIGS))
def test_resume_with_a_garbled_config_json_is_one_line_naming_file_and_fix(killed_run, kind):
    path = os.path.join(killed_run.out, "config.json")
    with open(path, "wb") as fh:
        fh.write(GARBLED_CONFIGS[kind])
    with pytest.raises(UserError) as err:
        run(killed_run)
    text = _one_line(err)
    assert "config.json" in text and "copy " in text and "step_000002" in text


def test_resume_with_a_wrongly_typed_config_value_is_one_line(killed_run):
    path = os.path.join(killed_run.out, "config.json")
    saved = json.loads(open(path).read())
    with open(path, "w") as fh:
        json.dump({**saved, "lr": "fast"}, fh)
    with pytest.raises(UserError, match="config key 'lr' differs from the saved run") as err:
        run(killed_run)
    _one_line(err)


def _state_path(cfg) -> str:
    return os.path.join(ckpt.latest_checkpoint(cfg.out), ckpt.STATE_FILE)


@pytest.mark.parametrize("damage, message", [
    (lambda p: open(p, "wb").write(b"\x00not a torch file"), "is corrupt"),
    (lambda p: open(p, "wb").close(), "is corrupt"),
    (lambda p: torch.save({"step": "three"}, p), "no valid 'step' entry"),
    (lambda p: torch.save([1, 2], p), "not a trainer state"),
    (lambda p: torch.save({**torch.load(p, weights_only=True), "optimizer": {"state": {}, "param_groups": []}}, p),
     "does not fit this run"),
], ids=["garbage", "empty", "wrong-type", "not-a-dict", "other-optimizer"])
def test_resume_with_a_corrupt_trainer_state_is_one_line(killed_run, damage, message):
    damage(_state_path(killed_run))
    with pytest.raises(UserError, match=message) as err:
        run(killed_run)
    assert "step_000002" in _one_line(err) and ("delete" in str(err.value))


def test_resume_with_a_corrupt_checkpoint_model_is_one_line(killed_run):
    path = ckpt.latest_checkpoint(killed_run.out) / ckpt.MODEL_FILE
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=r"cannot load .*model.safetensors") as err:
        run(killed_run)
    _one_line(err)


def test_resume_with_a_corrupt_log(killed_run):
    log = os.path.join(killed_run.out, "log.jsonl")
    lines = open(log).read().splitlines()
    with open(log, "wb") as fh:
        fh.write(b"\xff\xfe\x00binary")
    with pytest.raises(UserError, match=r"cannot read .*log.jsonl as text.*move it aside") as err:
        run(killed_run)
    _one_line(err)
    with open(log, "w") as fh:
        fh.write("\n".join([lines[0], "[1, 2]", *lines[1:]]) + "\n")
    with pytest.raises(UserError, match=r"log.jsonl line 2 is not a JSON record") as err:
        run(killed_run)
    _one_line(err)
    with open(log, "w") as fh:  # a torn last line (the kill) is dropped, and the run resumes
        fh.write("\n".join(lines) + '\n{"step": 3, "lo')
    assert run(killed_run).step == 4
    assert all(json.loads(line) for line in open(log).read().splitlines())


@pytest.mark.parametrize("name, content, message", [
    ("bad.yaml", b"method: [ft\nlr: 1", "cannot parse config file"),
    ("list.yaml", b"- ft\n- tecoa\n", "must hold a mapping"),
    ("types.yaml", b"lr: [1, 2]\n", "config key 'lr' must be a number"),
    ("nan.json", b'{"lr": NaN}', "config key 'lr' must be a finite number"),
    ("keys.yaml", b"1: 2\n", "config key 1 is not a name"),
    ("binary.yaml", b"\x00\xff\xfe\x93", "cannot read config file"),
    ("typo.yaml", b"bacth_size: 4\n", "unknown config key 'bacth_size'; did you mean 'batch_size'"),
    ("method.yaml", b"method: [ft]\n", "config key 'method' must be a non-empty string"),
    ("margs.yaml", b"method: tecoa\nmethod_args:\n  pgd_step: 3\n", "did you mean 'pgd_steps'"),
])
def test_malformed_config_file_is_one_line_with_exit_2(tmp_path, capsys, name, content, message):
    from grace_bench.cli import main

    path = tmp_path / name
    path.write_bytes(content)
    code = main(["finetune", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_unknown_method_arg_suggests_the_nearest_key(tmp_path):
    with pytest.raises(UserError, match="method_args.epss: method 'tecoa' has no such setting; did you mean 'eps'"):
        resolve_config(config_from_dict({"method": "tecoa", "method_args": {"epss": 0.1}}), get_method("tecoa"))
    path = tmp_path / "c.yaml"
    path.write_text("warmup: 3\n")
    with pytest.raises(UserError, match="did you mean 'warmup_steps'"):
        config_from_dict(load_config_file(path))


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_written_files_respect_the_umask(tmp_path, umask):
    from grace_bench.utils.atomic import atomic_save_safetensors, atomic_torch_save, atomic_write_json

    old = os.umask(umask)
    try:
        atomic_save_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(3)})
        atomic_torch_save(tmp_path / "s.pt", {"step": 1})
        atomic_write_json(tmp_path / "c.json", {"a": 1})
        res = run(cfg_for(tmp_path, max_steps=2))
    finally:
        os.umask(old)
    files = [tmp_path / "m.safetensors", tmp_path / "s.pt", tmp_path / "c.json", res.run_dir / "model.safetensors",
             res.last_checkpoint / ckpt.MODEL_FILE, res.last_checkpoint / ckpt.STATE_FILE,
             res.run_dir / "config.json"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def _save(run_dir, step, value):
    return ckpt.save_checkpoint(run_dir, step, model_state={"w": torch.full((2,), float(value))},
                                trainer_state={"step": step, "optimizer": {}, "scheduler": {}, "rng": {}},
                                config={"v": value})


def _loaded_value(run_dir) -> float:
    latest = ckpt.latest_checkpoint(run_dir)
    assert ckpt.load_trainer_state(latest)["step"] == 3
    return float(ckpt.load_tensors(latest / ckpt.MODEL_FILE)["w"][0])


def test_resaving_a_step_fails_safely_between_the_renames(tmp_path, monkeypatch):
    _save(tmp_path, 3, 1.0)
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(str(src)).startswith(".tmp-step_"):
            raise OSError("injected failure: the new checkpoint cannot be renamed in")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        _save(tmp_path, 3, 2.0)
    monkeypatch.undo()
    assert _loaded_value(tmp_path) == 1.0  # the old step 3 is back and whole
    _save(tmp_path, 3, 2.0)
    assert _loaded_value(tmp_path) == 2.0
    assert sorted(p.name for p in ckpt.checkpoints_root(tmp_path).iterdir()) == ["step_000003"]


def test_a_kill_between_the_renames_leaves_a_loadable_checkpoint(tmp_path):
    final = _save(tmp_path, 3, 1.0)
    # the state a kill leaves after "rename old aside" and before "rename new in"
    os.replace(final, final.with_name(".old-step_000003-4242"))
    assert _loaded_value(tmp_path) == 1.0
    _save(tmp_path, 3, 2.0)  # the next save puts the old one back, then replaces it
    assert _loaded_value(tmp_path) == 2.0
    assert sorted(p.name for p in ckpt.checkpoints_root(tmp_path).iterdir()) == ["step_000003"]
