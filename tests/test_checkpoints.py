"""Checkpoint specs, format sniffing, safe loading and conversion, each format made from ``tiny-clip``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from grace_bench.errors import UserError
from grace_bench.models import checkpoints as ckpt
from grace_bench.models.checkpoints import load_checkpoint, read_checkpoint_file
from grace_bench.models.clip_model import state_dict_fingerprint
from grace_bench.models.convert import add_convert_parser, convert_checkpoint
from grace_bench.models.loading import build_clip_model
from grace_bench.models.specs import (
    FileSpec,
    HfHubSpec,
    LocalDirSpec,
    MicroSpec,
    PretrainedSpec,
    RunDirSpec,
    parse_spec,
)

ARCH = "tiny-clip"
TINY_CFG = json.loads((Path(__file__).parents[1] / "grace_bench/models/configs/tiny-clip.json").read_text())


def _tiny(seed: int):
    torch.manual_seed(seed)
    return build_clip_model(ARCH)


@pytest.fixture(scope="module")
def source():
    """The model every checkpoint below is made from (fine-tuned weights, seed 1)."""
    return _tiny(1)


@pytest.fixture(scope="module")
def base_model():
    """A different tiny-clip (seed 2), standing in for the base a visual-only checkpoint came from."""
    return _tiny(2)


@pytest.fixture(scope="module")
def base_spec(tmp_path_factory, base_model):
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_file(_plain(base_model), str(path))
    return f"{ARCH}:{path}"


def _plain(clip) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in clip.model.state_dict().items()}


def _visual(clip, *, keep_prefix: bool) -> dict[str, torch.Tensor]:
    return {(k if keep_prefix else k[len("visual."):]): v.clone()
            for k, v in clip.model.state_dict().items() if k.startswith("visual.")}


def _outputs(clip) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, clip.image_size, clip.image_size, generator=gen)
    text = clip.tokenizer(["a photo of a three", "a sketch of a seven"])
    with torch.no_grad():
        return clip.model.encode_image(images), clip.model.encode_text(text)


def assert_same_model(loaded, expected_state: dict[str, torch.Tensor], reference_clip) -> None:
    """Same tensors (fingerprint) as ``expected_state``, and the same outputs as ``reference_clip``."""
    assert loaded.fingerprint() == state_dict_fingerprint(expected_state)
    assert loaded.fingerprint() == reference_clip.fingerprint()
    for got, want in zip(_outputs(loaded), _outputs(reference_clip)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class WiseFtStyleClassifier(nn.Module):
    """Shaped like wise-ft's pickled ``ImageClassifier``: ``image_encoder.model`` plus a linear head."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.image_encoder = nn.Module()
        self.image_encoder.model = clip_model
        self.classification_head = nn.Linear(32, 10)


# ---------------------------------------------------------------- spec parsing


def test_parse_spec_forms(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    assert isinstance(parse_spec("micro"), MicroSpec)
    assert parse_spec("ViT-B-32:openai") == PretrainedSpec("ViT-B-32:openai", "ViT-B-32", "openai")
    assert parse_spec("ViT-B/32:openai").arch == "ViT-B-32"
    assert parse_spec(f"{ARCH}:{weights}") == FileSpec(f"{ARCH}:{weights}", ARCH, weights)
    assert parse_spec(str(weights)) == FileSpec(str(weights), None, weights)
    assert parse_spec("hf-hub:org/name") == HfHubSpec("hf-hub:org/name", "org/name")
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text("{}")
    assert isinstance(parse_spec(f"local-dir:{tmp_path / 'oc'}"), LocalDirSpec)
    step = tmp_path / "runs" / "r1" / "checkpoints" / "step_000010"
    step.mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "config.json").write_text("{}")
    (tmp_path / "runs" / "r1" / "model.safetensors").write_bytes(b"x")
    (step / "model.safetensors").write_bytes(b"x")
    run = parse_spec(str(tmp_path / "runs" / "r1"))
    assert isinstance(run, RunDirSpec) and run.config == tmp_path / "runs" / "r1" / "config.json"
    assert parse_spec(str(step)).config == tmp_path / "runs" / "r1" / "config.json"


@pytest.mark.parametrize("spec, words", [
    ("ViT-Q-99:openai", ["unknown OpenCLIP architecture 'ViT-Q-99'", "open_clip.list_models()"]),
    ("ViT-B-32:/no/such/file.pt", ["checkpoint file not found: /no/such/file.pt", "check the path"]),
    ("/no/such/file.safetensors", ["checkpoint file not found"]),
    ("runs/no-such-run", ["run directory not found: runs/no-such-run"]),
    ("local-dir:/no/such/dir", ["local-dir folder not found"]),
    ("hf-hub:justone", ["hf-hub:org/name"]),
    ("ViT-B-32", ["names an architecture but no weights", "ViT-B-32:TAG"]),
    ("what-is-this", ["unrecognised checkpoint spec", "ARCH:TAG"]),
    ("", ["empty checkpoint spec"]),
])
def test_bad_specs_name_the_fix(spec, words):
    with pytest.raises(UserError) as err:
        parse_spec(spec)
    for word in words:
        assert word in str(err.value)
    assert "\n" not in str(err.value)


def test_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a grace-bench run"):
        parse_spec(str(tmp_path))
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(UserError, match="local-dir:"):
        parse_spec(str(tmp_path))


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_openclip_state_dict(tmp_path, source, suffix):
    path = tmp_path / f"model{suffix}"
    state = _plain(source)
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    clip = load_checkpoint(f"{ARCH}:{path}")
    assert clip.info["format"] == "openclip-state-dict" and clip.spec == f"{ARCH}:{path}"
    assert clip.arch == ARCH and clip.base_spec is None
    assert_same_model(clip, state, source)


def test_training_dict_with_module_prefix(tmp_path, source):
    path = tmp_path / "epoch_3.pt"
    wrapped = {"module." + k: v for k, v in _plain(source).items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": wrapped, "optimizer": {"state": {}, "param_groups": []}}, path)
    clip = load_checkpoint(f"{ARCH}:{path}")
    assert clip.info["format"] == "openclip-training-dict"
    assert any("stripped prefix 'module.'" in n for n in clip.info["notes"])
    assert_same_model(clip, _plain(source), source)


def _visual_plus_base(source, base_model):
    """What a visual-only load must give: the source's vision tower, everything else from the base."""
    expected = {k: (source if k.startswith("visual.") else base_model).model.state_dict()[k].clone()
                for k in source.model.state_dict()}
    return expected, build_clip_model(source.arch, expected)


def test_tecoa_dict(tmp_path, source, base_model, base_spec):
    path = tmp_path / "tecoa.pth.tar"
    vision = {"module." + k: v for k, v in _visual(source, keep_prefix=False).items()}
    torch.save({"epoch": 10, "arch": "vit_b32", "vision_encoder_state_dict": vision,
                "prompter_state_dict": {}, "best_acc1": torch.tensor(0.5)}, path)
    clip = load_checkpoint(f"{ARCH}:{path}", base=base_spec)
    expected, reference = _visual_plus_base(source, base_model)
    assert clip.info["format"] == "tecoa" and clip.base_spec == base_spec
    assert_same_model(clip, expected, reference)
    assert clip.fingerprint() not in {source.fingerprint(), base_model.fingerprint()}


@pytest.mark.parametrize("keep_prefix", [False, True])
def test_visual_only_state_dict_takes_base_text_tower(tmp_path, source, base_model, base_spec, keep_prefix):
    path = tmp_path / "fare.pt"
    torch.save(_visual(source, keep_prefix=keep_prefix), path)
    clip = load_checkpoint(f"{ARCH}:{path}", base=base_spec)
    expected, reference = _visual_plus_base(source, base_model)
    assert clip.info["format"] == "visual-only"
    assert_same_model(clip, expected, reference)


def test_visual_only_without_base_is_refused(tmp_path, source):
    path = tmp_path / "fare.pt"
    torch.save(_visual(source, keep_prefix=False), path)
    with pytest.raises(UserError, match="only vision-tower weights.*--base ARCH:TAG"):
        load_checkpoint(f"{ARCH}:{path}")


def test_micro_clip_visual_only_defaults_to_micro_base(tmp_path, monkeypatch):
    """For micro-clip the base defaults to ``micro``, resolved through ``load_micro_clip``."""
    import grace_bench.models.micro as micro

    torch.manual_seed(3)
    micro_base = build_clip_model("micro-clip")
    monkeypatch.setattr(micro, "load_micro_clip", lambda **_: build_clip_model("micro-clip", _plain(micro_base)))
    torch.manual_seed(4)
    tuned = build_clip_model("micro-clip")
    path = tmp_path / "fare-micro.pt"
    torch.save(_visual(tuned, keep_prefix=False), path)
    clip = load_checkpoint(f"micro-clip:{path}")
    expected, reference = _visual_plus_base(tuned, micro_base)
    assert clip.base_spec == "micro" and clip.info["format"] == "visual-only"
    assert clip.fingerprint() == state_dict_fingerprint(expected)
    assert load_checkpoint("micro").fingerprint() == micro_base.fingerprint()


def test_pickled_module_refused_then_trusted(tmp_path, source):
    path = tmp_path / "wiseft.pt"
    torch.save(source.model, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(f"{ARCH}:{path}")
    msg = str(err.value)
    assert "pickled Python object" in msg and "grace-bench convert" in msg and "--trust-pickle" in msg
    assert f"grace-bench convert {path} OUT.safetensors --arch {ARCH} --trust-pickle" in msg
    assert "open_clip.model.CLIP" in msg and "\n" not in msg
    clip = load_checkpoint(f"{ARCH}:{path}", trust_pickle=True)
    assert clip.info["format"] == "pickled-module"
    assert_same_model(clip, _plain(source), source)


def test_pickled_wrapper_module_strips_prefix_and_drops_head(tmp_path, source):
    path = tmp_path / "classifier.pt"
    torch.save(WiseFtStyleClassifier(build_clip_model(ARCH, _plain(source)).model), path)
    clip = load_checkpoint(f"{ARCH}:{path}", trust_pickle=True)
    notes = " ".join(clip.info["notes"])
    assert "stripped prefix 'image_encoder.model.'" in notes and "classification_head.weight" in notes
    assert_same_model(clip, _plain(source), source)


def test_convert_round_trip(tmp_path, source):
    pickled = tmp_path / "flyp.pt"
    torch.save(source.model, pickled)
    out = tmp_path / "converted.safetensors"
    with pytest.raises(UserError, match="--arch"):
        convert_checkpoint(str(pickled), out, trust_pickle=True)
    summary = convert_checkpoint(str(pickled), out, arch=ARCH, trust_pickle=True)
    assert summary["fingerprint"] == source.fingerprint() and summary["source_format"] == "pickled-module"
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["arch"] == ARCH and meta["source_format"] == "pickled-module"
    clip = load_checkpoint(str(out))  # the arch comes from the metadata
    assert clip.info["format"] == "openclip-state-dict"
    assert_same_model(clip, _plain(source), source)
    assert not list(tmp_path.glob(".*.tmp"))


def test_convert_cli_parser(tmp_path, source):
    src = tmp_path / "sd.pt"
    torch.save(_plain(source), src)
    parser = argparse.ArgumentParser(prog="grace-bench")
    add_convert_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", str(src), str(tmp_path / "out.safetensors"), "--arch", ARCH])
    assert args.func(args) == 0
    assert load_checkpoint(str(tmp_path / "out.safetensors")).fingerprint() == source.fingerprint()
    with pytest.raises(UserError, match="out.safetensors"):
        convert_checkpoint(f"{ARCH}:{src}", tmp_path / "out.pt")


def _openclip_folder(folder: Path, state: dict, weights_name: str = "open_clip_model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file(state, str(folder / weights_name))
    return folder


def test_local_dir_matches_openclip(tmp_path, source):
    folder = _openclip_folder(tmp_path / "oc model", _plain(source))
    clip = load_checkpoint(f"local-dir:{folder}")
    reference = open_clip.create_model(f"local-dir:{folder}")  # OpenCLIP's own loader, as an independent check
    assert clip.fingerprint() == state_dict_fingerprint(reference.state_dict()) == source.fingerprint()
    assert clip.mean == (0.5, 0.5, 0.5) and clip.std == (0.25, 0.25, 0.25)
    assert clip.arch == f"local-dir:{folder.resolve()}"
    assert_same_model(clip, _plain(source), source)


def _fake_hub_snapshot(cache: Path, repo_id: str) -> Path:
    """The layout huggingface_hub uses for a cached repo: refs/main -> snapshots/<commit>/files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_hf_hub_from_local_cache(tmp_path, source, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _openclip_folder(_fake_hub_snapshot(tmp_path / "hub", "someorg/tiny"), _plain(source))
    clip = load_checkpoint("hf-hub:someorg/tiny")
    assert clip.arch == "hf-hub:someorg/tiny" and clip.mean == (0.5, 0.5, 0.5)
    assert_same_model(clip, _plain(source), source)
    with pytest.raises(UserError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_checkpoint("hf-hub:someorg/absent")


def test_pretrained_tag_from_local_cache(tmp_path, source, monkeypatch):
    """``ARCH:TAG`` resolves the tag's file in the HF cache, applies its preprocess and its QuickGELU."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pcfg = {"hf_hub": "someorg/tiny-clip.fake/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda arch, tag: pcfg if (arch, tag) == (ARCH, "fake") else real(arch, tag))
    snapshot = _fake_hub_snapshot(tmp_path / "hub", "someorg/tiny-clip.fake")
    snapshot.mkdir(parents=True)
    save_file(_plain(source), str(snapshot / "open_clip_model.safetensors"))
    clip = load_checkpoint(f"{ARCH}:fake")
    assert clip.info["format"] == "openclip-pretrained" and clip.std == (0.2, 0.2, 0.2)
    assert clip.fingerprint() == source.fingerprint()
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


def test_pretrained_tag_offline_fails_fast(tmp_path, monkeypatch):
    """Not cached + HF_HUB_OFFLINE: a UserError, without touching the network (which would retry for ~47 s)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HOME", str(tmp_path))  # OpenCLIP's URL cache ~/.cache/clip is empty too

    def no_network(*args, **kwargs):
        raise AssertionError("the network was contacted in offline mode")

    monkeypatch.setattr(open_clip, "download_pretrained", no_network)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    with pytest.raises(UserError) as err:
        load_checkpoint("ViT-B-32:openai")
    assert "not in the local cache" in str(err.value) and "ViT-B-32:/path/to/weights.pt" in str(err.value)
    with pytest.raises(UserError, match="not a pretrained tag of ViT-B-32.*openai"):
        load_checkpoint("ViT-B-32:no-such-tag")


def test_run_dir(tmp_path, source, base_spec, monkeypatch):
    run = tmp_path / "runs" / "ft-1"
    step = run / "checkpoints" / "step_000005"
    step.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"arch": ARCH, "base": base_spec, "method": "ft"}))
    save_file(_plain(source), str(run / "model.safetensors"))
    save_file(_plain(source), str(step / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    clip = load_checkpoint("runs/ft-1")
    assert clip.spec == "runs/ft-1" and clip.base_spec == base_spec and clip.info["method"] == "ft"
    assert clip.info["format"] == "grace-bench-run"
    assert_same_model(clip, _plain(source), source)
    assert load_checkpoint(str(step)).fingerprint() == source.fingerprint()


# ---------------------------------------------------------------- bad files


def test_unknown_format_names_keys_and_formats(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"generator": {"w": [1, 2]}, "step": 7}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(f"{ARCH}:{path}")
    msg = str(err.value)
    assert "generator" in msg and "step" in msg and "openclip-training-dict" in msg and "tecoa" in msg


def test_unrelated_tensors_are_an_unknown_format(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="none of which match the architecture"):
        load_checkpoint(f"{ARCH}:{path}")


@pytest.mark.parametrize("name, payload", [
    ("garbage.pt", b"this is not a checkpoint\n" * 20),
    ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 32),
    ("empty.bin", b""),
])
def test_garbage_file(tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(UserError, match="corrupt or unreadable|an empty file"):
        read_checkpoint_file(path)


def test_missing_and_misshaped_keys(tmp_path, source):
    state = _plain(source)
    del state["text_projection"]
    del state["visual.proj"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match=r"2 missing keys \((text_projection, visual.proj|visual.proj, text_proj)"):
        load_checkpoint(f"{ARCH}:{path}")
    state = _plain(source)
    state["ln_final.weight"] = torch.ones(31)
    state["extra.thing"] = torch.ones(2)
    save_file(state, str(path))
    with pytest.raises(UserError) as err:
        load_checkpoint(f"{ARCH}:{path}")
    msg = str(err.value)
    assert "unexpected keys (extra.thing)" in msg and "ln_final.weight (31,) vs model (32,)" in msg


def test_bare_file_without_arch_metadata(tmp_path, source):
    path = tmp_path / "plain.safetensors"
    save_file(_plain(source), str(path))
    with pytest.raises(UserError, match="write the spec as ARCH:"):
        load_checkpoint(str(path))


def test_untrusted_pickle_is_never_executed(tmp_path, monkeypatch):
    """weights_only loading must refuse before any object is built (the class's __reduce__ never runs)."""
    ran = []
    monkeypatch.setattr(ckpt, "_EVIDENCE", ran, raising=False)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload()}, path)
    with pytest.raises(UserError, match="pickled Python object"):
        read_checkpoint_file(path)
    assert ran == []


def _record_call() -> None:
    ckpt._EVIDENCE.append("executed")


class _Payload:
    def __reduce__(self):
        return (_record_call, ())


def test_wrong_arch_reports_shapes(tmp_path, source):
    """Weights of another size: a shape error naming ARCH, before any base model is asked for."""
    path = tmp_path / "fare-tiny.pt"
    torch.save(_visual(source, keep_prefix=False), path)
    with pytest.raises(UserError, match=r"does not fit the architecture: \d+ shape mismatches .*check that ARCH"):
        load_checkpoint(f"micro-clip:{path}", base="micro-clip:/never/loaded.pt")
