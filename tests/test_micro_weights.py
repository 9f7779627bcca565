"""micro-CLIP's shipped weights vs a rebuild: loading, quiet OpenCLIP, `micro pretrain` / `micro info`, progress."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from grace_bench.cli import main
from grace_bench.models import micro
from grace_bench.models.loading import RANDOM_INIT_WARNING


def _fake_rebuild(tmp_path, monkeypatch):
    """Make `micro pretrain` fast: the 'rebuild' is the shipped file with one weight changed, written to the cache."""
    from safetensors.torch import load_file

    from grace_bench.models.clip_model import state_dict_fingerprint
    from grace_bench.utils.atomic import atomic_save_safetensors

    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    state = load_file(str(micro.SHIPPED_WEIGHTS))
    state["logit_scale"] = state["logit_scale"] + 0.5

    def rebuild(*, progress: bool = True) -> dict:
        path = micro.rebuilt_weights_path()
        atomic_save_safetensors(path, state, metadata={"arch": micro.MICRO_ARCH})
        return {"path": path, "fingerprint": state_dict_fingerprint(state), "seconds": 1.0, "image_steps_run": 7,
                "val_accuracy": 0.9}

    monkeypatch.setattr(micro, "rebuild_micro_weights", rebuild)
    return state_dict_fingerprint(state)


def test_loading_micro_clip_logs_no_random_init_warning(caplog, tmp_path):
    from grace_bench.models.checkpoints import load_checkpoint

    copy = tmp_path / "copy.safetensors"
    shutil.copy(micro.SHIPPED_WEIGHTS, copy)
    with caplog.at_level(logging.WARNING):
        micro.load_micro_clip()
        load_checkpoint("micro")
        load_checkpoint(f"micro-clip:{copy}")
    assert RANDOM_INIT_WARNING not in caplog.text
    assert "initialized randomly" not in caplog.text


def test_the_warning_filter_is_narrow(caplog):
    """Outside our loads, and for any other message, OpenCLIP's root-logger warnings still show."""
    from grace_bench.models.loading import no_random_init_warning

    with caplog.at_level(logging.WARNING):
        with no_random_init_warning():
            logging.warning(f"{RANDOM_INIT_WARNING} 'x'. Model initialized randomly.")
            logging.warning("Model x initialized partially.")
        logging.warning(f"{RANDOM_INIT_WARNING} 'y'. Model initialized randomly.")
    assert "'x'" not in caplog.text
    assert "initialized partially" in caplog.text and "'y'" in caplog.text


def test_rebuilt_weights_load_with_the_printed_spec(tmp_path, monkeypatch, capsys):
    from grace_bench.models.checkpoints import load_checkpoint

    rebuilt_fp = _fake_rebuild(tmp_path, monkeypatch)
    assert main(["micro", "pretrain", "--no-progress"]) == 0
    out = capsys.readouterr().out
    shipped_fp = micro.weights_fingerprint(micro.SHIPPED_WEIGHTS)
    assert rebuilt_fp in out and shipped_fp in out
    assert "differs from the shipped weights" in out
    spec = out.split("grace-bench eval ", 1)[1].split()[0]
    assert spec == f"micro-clip:{micro.rebuilt_weights_path()}"
    clip = load_checkpoint(spec)
    assert clip.fingerprint() == rebuilt_fp and clip.arch == "micro-clip"
    assert load_checkpoint("micro").fingerprint() == shipped_fp  # the default is untouched


def test_micro_info_shows_shipped_weights_and_a_rebuild(tmp_path, monkeypatch, capsys):
    rebuilt_fp = _fake_rebuild(tmp_path, monkeypatch)
    assert main(["micro", "info"]) == 0
    out = capsys.readouterr().out
    assert str(micro.SHIPPED_WEIGHTS) in out and micro.weights_fingerprint(micro.SHIPPED_WEIGHTS) in out
    assert "rebuild: none" in out
    micro.rebuild_micro_weights()
    assert main(["micro", "info"]) == 0
    out = capsys.readouterr().out
    assert str(micro.rebuilt_weights_path()) in out and rebuilt_fp in out


def test_weights_fingerprint_is_the_model_fingerprint():
    assert micro.weights_fingerprint(micro.SHIPPED_WEIGHTS) == micro.load_micro_clip().fingerprint()


@pytest.mark.slow
def test_pretraining_progress_bar_ends_where_training_stops(capsys):
    """An early stop at the val target closes the image bar at the real step count, not at image_steps."""
    recipe = micro.PretrainRecipe(text_steps=2, image_steps=40, target_val_accuracy=0.0, check_every=3,
                                  batch_size=8, renditions_per_image=1, warmup=1)
    torch.manual_seed(0)
    out = micro.pretrain_micro_clip(recipe, progress=True)
    assert out["image_steps_run"] == 3
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "reached at step 3" in last and "3/3" in last and "/40" not in last
    assert "1/2: text tower" in err and "2/2: image tower" in err
