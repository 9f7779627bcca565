"""WiSE-FT: alpha grid parsing, bit-exact endpoints over the whole state dict, run dirs, optional evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from grace_bench.cli import main
from grace_bench.errors import UserError
from grace_bench.finetune.wise import interpolate_state_dicts, parse_alphas
from grace_bench.models.checkpoints import load_checkpoint
from grace_bench.models.loading import build_clip_model
from grace_bench.utils.atomic import atomic_save_safetensors


def test_parse_alphas():
    grid = parse_alphas("0:1:0.1")
    assert len(grid) == 11 and grid[0] == 0.0 and grid[-1] == 1.0 and grid[3] == 0.3
    assert parse_alphas("1,0,0.5") == [0.0, 0.5, 1.0]
    assert parse_alphas("0.25") == [0.25]
    for bad in ("0:1:0.3", "0:2:0.5", "a:b:c", "1:0:0.1", "-0.1"):
        with pytest.raises(UserError, match="alpha"):
            parse_alphas(bad)


def test_interpolation_endpoints_are_exact_and_midpoint_is_linear():
    torch.manual_seed(0)
    zs = build_clip_model("tiny-clip").model.state_dict()
    torch.manual_seed(1)
    ft = build_clip_model("tiny-clip").model.state_dict()
    zs["visual.conv1.weight"][0, 0, 0, 0] = -0.0  # signed zeros survive exactly at the endpoints
    at0, at1, mid = (interpolate_state_dicts(zs, ft, a) for a in (0.0, 1.0, 0.3))
    for key in zs:
        assert torch.equal(at0[key], zs[key]) and torch.equal(at1[key], ft[key])
        if zs[key].is_floating_point():
            torch.testing.assert_close(mid[key], 0.7 * zs[key] + 0.3 * ft[key], rtol=1e-6, atol=1e-7)
    assert torch.signbit(at0["visual.conv1.weight"][0, 0, 0, 0])
    with pytest.raises(UserError, match="different tensors"):
        interpolate_state_dicts(zs, {k: v for k, v in ft.items() if k != "logit_scale"}, 0.5)


def _save(path, seed):
    torch.manual_seed(seed)
    sd = build_clip_model("tiny-clip").model.state_dict()
    atomic_save_safetensors(path, sd, metadata={"arch": "tiny-clip"})
    return sd


def test_wise_cli_writes_loadable_runs_with_exact_endpoints(tmp_path):
    zs = _save(tmp_path / "zs.safetensors", 0)
    ft = _save(tmp_path / "ft.safetensors", 1)
    out = tmp_path / "wise"
    code = main(["wise", f"tiny-clip:{tmp_path / 'zs.safetensors'}", f"tiny-clip:{tmp_path / 'ft.safetensors'}",
                 "--alpha", "0:1:0.5", "--out", str(out), "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["alpha_0.00", "alpha_0.50", "alpha_1.00"]
    loaded = {a: load_checkpoint(str(out / f"alpha_{a}")).model.state_dict() for a in ("0.00", "0.50", "1.00")}
    for key in zs:  # the whole state dict: vision, text tower, logit scale
        assert torch.equal(loaded["0.00"][key], zs[key]), key
        assert torch.equal(loaded["1.00"][key], ft[key]), key
    torch.testing.assert_close(loaded["0.50"]["token_embedding.weight"],
                               0.5 * (zs["token_embedding.weight"] + ft["token_embedding.weight"]))
    cfg = json.loads((out / "alpha_0.50" / "config.json").read_text())
    assert cfg["method"] == "wise-ft" and cfg["alpha"] == 0.5 and cfg["arch"] == "tiny-clip"
    assert main(["wise", "nope.safetensors", "also-nope", "--alpha", "0.5", "--out", str(out)]) == 2


@pytest.mark.slow
def test_wise_eval_writes_the_alpha_curve(tmp_path):
    for name, seed in (("zs", 0), ("ft", 1)):
        torch.manual_seed(seed)
        sd = build_clip_model("micro-clip").model.state_dict()
        atomic_save_safetensors(tmp_path / f"{name}.safetensors", sd, metadata={"arch": "micro-clip"})
    out = tmp_path / "wise"
    code = main(["wise", f"micro-clip:{tmp_path / 'zs.safetensors'}", f"micro-clip:{tmp_path / 'ft.safetensors'}",
                 "--alpha", "0,1", "--out", str(out), "--eval", "--suite", "micro", "--datasets", "micro",
                 "--attack", "none", "--limit", "20", "--eval-out", str(tmp_path / "results"), "--device", "cpu",
                 "--no-progress"])
    assert code == 0
    curve = json.loads((out / "wise_curve.json").read_text())["curve"]
    assert [c["alpha"] for c in curve] == [0.0, 1.0]
    assert all(0.0 <= c["aggregates"]["id"] <= 1.0 for c in curve)
