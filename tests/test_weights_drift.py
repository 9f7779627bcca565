"""Relative weight drift, and the `grace-bench geometry ...` commands end to end on the micro suite."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from grace_bench.errors import UserError
from grace_bench.geometry.weights import layer_of, tower_of, weight_drift


def test_weight_drift_by_hand():
    ref = {
        "visual.conv1.weight": torch.tensor([3.0, 4.0]),
        "visual.transformer.resblocks.0.attn.in_proj_weight": torch.tensor([0.0, 5.0]),
        "transformer.resblocks.0.mlp.c_fc.weight": torch.tensor([1.0, 0.0]),
        "logit_scale": torch.tensor(2.0),
        "visual.extra": torch.ones(3),
    }
    state = {
        "module.visual.conv1.weight": torch.tensor([3.0, 5.0]),  # prefixes are stripped
        "visual.transformer.resblocks.0.attn.in_proj_weight": torch.tensor([0.0, 5.0]),
        "transformer.resblocks.0.mlp.c_fc.weight": torch.tensor([1.0, 0.0]),
        "logit_scale": torch.tensor(2.0),
        "only_here": torch.zeros(1),
        "counter": torch.tensor(3),  # integer entries are ignored
    }
    out = weight_drift(state, ref)
    assert out["overall"]["relative"] == pytest.approx(1.0 / math.sqrt(25 + 25 + 1 + 4))
    assert out["towers"]["vision"]["relative"] == pytest.approx(1.0 / math.sqrt(50))
    assert out["towers"]["text"]["relative"] == 0.0 and out["towers"]["other"]["relative"] == 0.0
    assert out["layers"]["visual.conv1"]["relative"] == pytest.approx(0.2)
    assert out["layers"]["visual.transformer.resblocks.0"]["relative"] == 0.0
    assert out["missing_in_checkpoint"] == ["visual.extra"] and out["missing_in_reference"] == ["only_here"]
    with pytest.raises(UserError, match="same architecture"):
        weight_drift({"a": torch.zeros(2)}, {"a": torch.zeros(3)})


def test_weight_drift_layers_keep_network_order():
    names = ["visual.conv1.weight"] + [f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(12)] \
        + ["visual.ln_post.weight", "logit_scale"]
    state = {n: torch.full((2,), float(i + 1)) for i, n in enumerate(names)}
    ref = {n: torch.ones(2) for n in reversed(names)}
    layers = list(weight_drift(state, ref)["layers"])
    assert layers == [layer_of(n) for n in names]  # resblocks.2 before resblocks.10, ln_post after the blocks


def test_tower_and_layer_names():
    assert tower_of("model.visual.proj") == "vision"
    assert tower_of("positional_embedding") == "text" and tower_of("visual.positional_embedding") == "vision"
    assert tower_of("logit_scale") == "other"
    assert layer_of("visual.transformer.resblocks.11.mlp.c_fc.bias") == "visual.transformer.resblocks.11"
    assert layer_of("visual.ln_post.weight") == "visual.ln_post" and layer_of("visual.proj") == "visual.proj"


def test_weight_drift_on_tiny_clip(tiny_clip):
    ref = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    with torch.no_grad():
        tiny_clip.model.visual.proj.mul_(1.5)
    out = weight_drift(tiny_clip.model.state_dict(), ref)
    assert out["towers"]["text"]["relative"] == 0.0
    assert out["layers"]["visual.proj"]["relative"] == pytest.approx(0.5, rel=1e-6)
    assert 0 < out["overall"]["relative"] < out["towers"]["vision"]["relative"] < 0.5


# ------------------------------------------------------------------------------ CLI, end to end


@pytest.fixture(scope="module")
def micro_checkpoints(tmp_path_factory):
    """Two random micro-clip checkpoints (32 px, the micro suite's size): a reference and a perturbed copy."""
    from grace_bench.models.loading import build_clip_model
    from grace_bench.utils.atomic import atomic_save_safetensors

    root = tmp_path_factory.mktemp("geometry-ckpt")
    torch.manual_seed(0)
    sd = build_clip_model("micro-clip").model.state_dict()
    gen = torch.Generator().manual_seed(1)
    tuned = {k: v + 0.05 * v.abs().mean() * torch.randn(v.shape, generator=gen)
             if k.startswith("visual.") and v.is_floating_point() else v for k, v in sd.items()}
    atomic_save_safetensors(root / "ref.safetensors", sd)
    atomic_save_safetensors(root / "tuned.safetensors", tuned)
    return f"micro-clip:{root / 'tuned.safetensors'}", f"micro-clip:{root / 'ref.safetensors'}", sd, tuned


@pytest.fixture
def cli(tmp_path, monkeypatch):
    from grace_bench.cli import main

    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"

    def run(*argv: str) -> int:
        return main(["geometry", *argv, "--out", str(out), "--no-progress"])

    run.out = out
    return run


def _result(out, kind):
    (path,) = out.glob(f"geometry-{kind}-*.json")
    data = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz")) as z:
        arrays = {k: z[k] for k in z.files}
    return data, arrays


def test_cli_weights(cli, micro_checkpoints, capsys):
    tuned, ref, sd, tuned_sd = micro_checkpoints
    assert cli("weights", tuned, "--ref", ref) == 0
    data, _ = _result(cli.out, "weights")
    assert data["schema"] == "grace-bench/geometry/v1" and data["kind"] == "weights"
    assert data["overall"]["relative"] == pytest.approx(weight_drift(tuned_sd, sd)["overall"]["relative"], rel=1e-9)
    assert data["towers"]["text"]["relative"] == 0.0 and data["ref"]["spec"] == ref
    assert cli("weights", tuned, "--ref", ref) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli("weights", tuned, "--ref", tuned) == 2  # other settings: refused without --force
    assert "--force" in capsys.readouterr().err
    assert cli("weights", tuned) == 2  # no reference recorded in a bare file
    assert "--ref" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"\x89PNG\r\n\x1a\n\xff\xfe", b'{"config_hash": "ab', b"[1, 2]"])
def test_cli_corrupt_earlier_result_is_a_one_line_error(cli, micro_checkpoints, capsys, damage):
    tuned, ref, _, _ = micro_checkpoints
    assert cli("weights", tuned, "--ref", ref) == 0
    (path,) = cli.out.glob("geometry-weights-*.json")
    path.write_bytes(damage)
    capsys.readouterr()
    assert cli("weights", tuned, "--ref", ref) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(path) in err and "--force" in err
    assert path.read_bytes() == damage  # left for the user to look at
    assert cli("weights", tuned, "--ref", ref, "--force") == 0
    assert json.loads(path.read_text())["kind"] == "weights"


def test_cli_hessian(cli, micro_checkpoints, capsys):
    tuned, _, _, _ = micro_checkpoints
    assert cli("hessian", tuned, "--n", "16", "--batch-size", "16", "--top-k", "2", "--trace-samples", "4",
               "--slq-runs", "1", "--slq-iter", "6", "--group", "visual.transformer.resblocks.3") == 0
    data, arrays = _result(cli.out, "hessian")
    assert data["lambda_max"] == data["top_eigenvalues"]["eigenvalues"][0]
    assert data["data"]["n"] == 16 and data["data"]["dataset"] == "micro" and data["config"]["seed"] == 0
    assert list(data["per_layer_curvature"]) == ["model.visual.transformer.resblocks.3"]
    assert arrays["density_grid"].shape == arrays["density_density"].shape == (1000,)
    top = data["top_eigenvalues"]
    assert top["criterion"] == "estimate" and top["iterations"] >= 6  # also the (only) SLQ run
    assert data["density"]["shared_runs"] == 1 and data["density"]["num_hvp"] == 0
    assert data["trace"]["deflation"]["rank"] == top["iterations"]
    assert data["num_hvp_total"] == top["num_hvp"] + 4
    assert cli("hessian", tuned, "--n", "16", "--batch-size", "16", "--top-k", "1", "--trace-samples", "0",
               "--slq-runs", "0", "--lanczos-criterion", "residual", "--group", "visual.proj", "--force") == 0
    data, _ = _result(cli.out, "hessian")
    assert data["top_eigenvalues"]["criterion"] == "residual" and "density" not in data and "trace" not in data
    assert data["top_eigenvalues"]["relative_residuals"][0] <= 1e-3
    assert cli("hessian", tuned, "--group", "nothing.here", "--force") == 2
    assert "matches no parameter" in capsys.readouterr().err


def test_cli_sharpness(cli, micro_checkpoints):
    tuned, _, _, _ = micro_checkpoints
    assert cli("sharpness", tuned, "--n", "16", "--rho", "0,0.05", "--samples", "2", "--steps", "2",
               "--group", "visual.proj") == 0
    data, arrays = _result(cli.out, "sharpness")
    assert set(data["definitions"]) == {"average", "worst"}
    assert data["average"]["sharpness"][0] == 0.0 and data["worst"]["sharpness"][0] == 0.0
    np.testing.assert_allclose(arrays["rho"], [0.0, 0.05])


def test_cli_landscape_origin_and_directions(cli, micro_checkpoints):
    from grace_bench.data.suites import get_suite
    from grace_bench.eval.context import classifier_for
    from grace_bench.geometry.losses import fixed_subset, loss_and_accuracy
    from grace_bench.models.checkpoints import load_checkpoint

    tuned, _, _, _ = micro_checkpoints
    assert cli("landscape", tuned, "--n", "16", "--range=-0.5:0.5:3", "--group", "visual.proj") == 0
    data, arrays = _result(cli.out, "landscape")
    clip = load_checkpoint(tuned)
    suite = get_suite("micro")
    clf = classifier_for(clip, suite, suite.dataset("micro"))
    batches = fixed_subset(suite.dataset("micro").load(None), 16, 128, seed=0)
    assert data["loss_at_origin"] == pytest.approx(loss_and_accuracy(clf, batches)[0], rel=1e-5)
    np.testing.assert_allclose(arrays["axis_0"], [-0.5, 0.0, 0.5])
    assert arrays["direction_0/model.visual.proj"].shape == tuple(clip.model.visual.proj.shape)
    assert not (cli.out / ".geometry-state").exists()  # the partial state is cleared when complete


def test_cli_landscape_interpolation(cli, micro_checkpoints):
    tuned, ref, _, _ = micro_checkpoints
    assert cli("landscape", tuned, "--ref", ref, "--mode", "interp", "--n", "16", "--range", "0,1") == 0
    data, arrays = _result(cli.out, "landscape")
    assert data["mode"] == "interp" and arrays["loss"].shape == (2,)
    assert data["loss_at_origin"] == pytest.approx(float(arrays["loss"][0]))


def test_cli_interpolation_matches_each_checkpoint_and_a_hand_built_mix(cli, micro_checkpoints):
    """Endpoints equal each checkpoint's own loss; an interior alpha equals a separately loaded mixture."""
    from grace_bench.data.suites import get_suite
    from grace_bench.eval.context import classifier_for
    from grace_bench.geometry.losses import fixed_subset, loss_and_accuracy
    from grace_bench.models.checkpoints import load_checkpoint

    tuned, ref, _, _ = micro_checkpoints
    assert cli("landscape", tuned, "--ref", ref, "--mode", "interp", "--n", "16", "--range", "0,0.4,1") == 0
    _, arrays = _result(cli.out, "landscape")
    suite = get_suite("micro")
    spec = suite.dataset("micro")
    batches = fixed_subset(spec.load(None), 16, 64, seed=0)
    tuned_clip, ref_clip = load_checkpoint(tuned), load_checkpoint(ref)
    head_clf = classifier_for(tuned_clip, suite, spec)  # the zero-shot head stays the checkpoint's along the path

    def loss_with(state: dict) -> float:
        model = load_checkpoint(tuned).model
        model.load_state_dict(state)
        clf = type(head_clf)(model, head_clf.head, tuned_clip.mean, tuned_clip.std).eval()
        return loss_and_accuracy(clf, batches)[0]

    s0, s1 = ref_clip.model.state_dict(), tuned_clip.model.state_dict()
    mix = {k: (0.6 * s0[k] + 0.4 * s1[k]) if v.is_floating_point() else v for k, v in s1.items()}
    expected = [loss_with(s0), loss_with(mix), loss_and_accuracy(head_clf, batches)[0]]
    np.testing.assert_allclose(arrays["loss"], expected, rtol=1e-5)
    assert len(set(np.round(arrays["loss"], 6))) == 3  # not a flat line


def test_cli_features(cli, micro_checkpoints):
    tuned, ref, _, _ = micro_checkpoints
    assert cli("features", tuned, "--ref", ref, "--n", "24", "--batch-size", "12", "--ood", "micro-v2",
               "--pgd-steps", "2", "--k", "5") == 0
    data, arrays = _result(cli.out, "features")
    assert 0.0 < data["cka_to_ref"] <= 1.0 + 1e-9
    assert data["layer_names"] == ["resblock.0", "resblock.1", "resblock.2", "resblock.3", "embedding"]
    assert arrays["cka_layers"].shape == (5, 5)
    assert set(data["centroid_cosine"]["id_to_ood"]) == {"micro-v2"}
    assert data["gram_drift"]["id"] > 0 and "delta_adv" in data["lid"]
    assert data["reference_metrics"]["centroid_cosine"]["id_to_adv"]["num_classes"] >= 1
    assert data["reference_is_checkpoint"] is False
    assert data["reference_metrics"]["lid"]["delta_adv"] != data["lid"]["delta_adv"]


def test_cli_features_against_itself_reuses_the_checkpoint_side(cli, micro_checkpoints):
    tuned, _, _, _ = micro_checkpoints
    assert cli("features", tuned, "--ref", tuned, "--n", "24", "--batch-size", "12", "--ood", "micro-v2",
               "--pgd-steps", "2", "--k", "5") == 0
    data, arrays = _result(cli.out, "features")
    assert data["reference_is_checkpoint"] is True
    assert data["cka_to_ref"] == pytest.approx(1.0, abs=1e-9)
    assert data["gram_drift"]["id"] == pytest.approx(0.0, abs=1e-6)
    assert data["reference_metrics"]["lid"] == data["lid"]
    assert data["reference_metrics"]["centroid_cosine"] == data["centroid_cosine"]
    np.testing.assert_array_equal(arrays["ref_embeddings_id"], arrays["embeddings_id"])


def test_features_reuse_the_reference_side_with_identical_numbers(tmp_path, monkeypatch, micro_checkpoints):
    """A worker keeps the reference's side between jobs; a checkpoint measured after another one gets exactly the
    numbers of a fresh process, and other settings or data are never served from the kept side."""
    from grace_bench.cli import main
    from grace_bench.geometry.diagnostics import features
    from grace_bench.utils.atomic import atomic_save_safetensors

    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    tuned, ref, sd, _ = micro_checkpoints
    gen = torch.Generator().manual_seed(2)
    other = {k: v + 0.05 * v.abs().mean() * torch.randn(v.shape, generator=gen)
             if k.startswith("visual.") and v.is_floating_point() else v for k, v in sd.items()}
    atomic_save_safetensors(tmp_path / "other.safetensors", other)
    other = f"micro-clip:{tmp_path / 'other.safetensors'}"
    flags = ["--ref", ref, "--n", "24", "--batch-size", "12", "--ood", "micro-v2", "--pgd-steps", "2", "--k", "5",
             "--no-progress"]

    def measure(ckpt: str, out: str, *extra: str):
        assert main(["geometry", "features", ckpt, *flags, *extra, "--out", str(tmp_path / out)]) == 0
        return _result(tmp_path / out, "features")

    features._last_reference.clear()
    measure(tuned, "first")
    kept = features._last_reference[0][0]
    reused, reused_arrays = measure(other, "reused")
    assert features._last_reference[0][0] == kept  # the second checkpoint was served from the kept side
    features._last_reference.clear()
    fresh, fresh_arrays = measure(other, "fresh")
    assert reused["reference_metrics"] == fresh["reference_metrics"]
    assert reused["cka"] == fresh["cka"] and reused["gram_drift"] == fresh["gram_drift"]
    for name in fresh_arrays:
        np.testing.assert_array_equal(reused_arrays[name], fresh_arrays[name])
    measure(other, "more-images", "--n", "36")
    assert features._last_reference[0][0] != kept
