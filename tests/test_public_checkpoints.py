"""Published robust CLIP checkpoints load without conversion: each file is built from tiny-clip exactly as the
method's own code writes it (docs/checkpoints.md cites the lines), then loaded by its spec string.

The base is a QuickGELU tiny-clip (as OpenAI's CLIP, which TeCoA, PMG-AFT, TGA-ZSR, AGFT, FARE fine-tune), given as a
``local-dir:`` folder, while the spec names the plain ``tiny-clip``: a visual-only file must take the base's
activation, not only its text tower.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from grace_bench.errors import UserError
from grace_bench.models.checkpoints import load_checkpoint
from grace_bench.models.clip_model import register_model_configs

ARCH = "tiny-clip"
TINY_CFG = json.loads((Path(__file__).parents[1] / "grace_bench/models/configs/tiny-clip.json").read_text())
VISUAL = "visual."
OPENAI_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
register_model_configs()  # tiny-clip becomes an OpenCLIP model name


def _openclip_dir(folder: Path, state: dict[str, torch.Tensor], weights_name: str) -> Path:
    """An OpenCLIP model folder (the layout of an ``hf-hub:`` repo): QuickGELU config + weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": {**TINY_CFG, "quick_gelu": True}, "preprocess_cfg": OPENAI_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if weights_name.endswith(".safetensors"):
        save_file(state, str(folder / weights_name))
    else:
        torch.save(state, folder / weights_name)
    return folder


def _quickgelu_model(seed: int, *, fp16_exact: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        model = open_clip.create_model(ARCH, force_quick_gelu=True).eval()
        if fp16_exact:  # weights that survive a round trip through float16, for files saved in half precision
            for tensor in model.state_dict().values():
                tensor.copy_(tensor.half().float())
    return model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _vision(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.visual.state_dict()``: what every one of these repositories saves (OpenAI-CLIP names = OpenCLIP's)."""
    return {k[len(VISUAL):]: v for k, v in _state(model).items() if k.startswith(VISUAL)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The pretrained base (seed 2, as a local-dir folder), the fine-tuned model (seed 1) and what loading must give."""
    root = tmp_path_factory.mktemp("public")
    base = _quickgelu_model(2, fp16_exact=True)
    tuned = _quickgelu_model(1, fp16_exact=True)
    base_dir = _openclip_dir(root / "base", _state(base), "open_clip_model.safetensors")
    expected = {k: (tuned if k.startswith(VISUAL) else base).state_dict()[k].clone() for k in base.state_dict()}
    reference = open_clip.create_model(f"local-dir:{base_dir}").eval()  # OpenCLIP's own build of the base arch
    reference.load_state_dict(expected)
    return {"root": root, "base": f"local-dir:{base_dir}", "base_state": _state(base), "tuned": tuned,
            "reference": reference}


def _logits(model: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=gen)
    text = open_clip.get_tokenizer(ARCH)(["a photo of a three", "a sketch of a seven", "a blurry five"])
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        words = torch.nn.functional.normalize(model.encode_text(text), dim=-1)
        return model.logit_scale.exp() * image @ words.T


def _assert_same_logits(clip, reference: torch.nn.Module) -> None:
    torch.testing.assert_close(_logits(clip.model), _logits(reference), rtol=0, atol=0)


def _sgd_state(vision: dict[str, torch.Tensor]) -> dict:
    """``torch.optim.SGD(model.visual.parameters(), momentum=0.9).state_dict()`` after a step."""
    return {"state": {i: {"momentum_buffer": torch.zeros_like(v)} for i, v in enumerate(vision.values())},
            "param_groups": [{"lr": 1e-5, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0, "nesterov": False,
                              "maximize": False, "foreach": None, "differentiable": False, "fused": None,
                              "params": list(range(len(vision)))}]}


def _tecoa_dict(vision: dict[str, torch.Tensor], *, data_parallel: bool, best_acc1) -> dict:
    """TeCoA's ``save_checkpoint`` payload (PMG-AFT and TGA-ZSR write the same keys)."""
    prefix = "module." if data_parallel else ""
    return {"epoch": 10, "state_dict": {}, "add_prompter": {f"{prefix}prompt": torch.zeros(1, 0, 768)},
            "vision_encoder_state_dict": vision, "best_acc1": best_acc1, "optimizer": _sgd_state(vision)}


def _as_numpy1_pickle(path: Path) -> None:
    """Rewrite a torch zip file as numpy 1 pickled its scalars (``numpy.core`` instead of ``numpy._core``)."""
    original = path.with_suffix(".orig")
    path.rename(original)
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                assert b"cnumpy._core.multiarray\nscalar\n" in data
                data = data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
            dst.writestr(info, data)


# ---------------------------------------------------------------- visual-only formats: the base gives the rest


@pytest.mark.parametrize("method", ["tecoa", "pmg-aft", "tga-zsr", "tecoa-numpy1"])
def test_tecoa_family_dict(world, method):
    """TeCoA and PMG-AFT (DataParallel, best_acc1 a numpy float) and TGA-ZSR (plain model, best_acc1 0.0)."""
    path = world["root"] / f"{method}_model_best.pth.tar"
    vision = _vision(world["tuned"])
    best = 0.0 if method == "tga-zsr" else np.float64(38.18)
    torch.save(_tecoa_dict(vision, data_parallel=method != "tga-zsr", best_acc1=best), path)
    if method == "tecoa-numpy1":
        _as_numpy1_pickle(path)
    clip = load_checkpoint(f"{ARCH}:{path}", base=world["base"])
    assert clip.info["format"] == "tecoa" and clip.base_spec == world["base"]
    assert any("QuickGELU" in n or "activation" in n for n in clip.info["notes"])
    _assert_same_logits(clip, world["reference"])


@pytest.mark.parametrize("half", [False, True])
def test_agft_dict(world, half):
    """AGFT's ``state_dict_train()``: fp32 with --use_float, else the fp16 weights of OpenAI's CLIP on a GPU."""
    vision = {k: (v.half() if half else v) for k, v in _vision(world["tuned"]).items()}
    path = world["root"] / f"40_180_4_ViT-B_32_AGFT_ImageNet_10{'_fp16' if half else ''}.pth"
    torch.save({"modules": {"clip.visual": vision}, "params": {}}, path)
    clip = load_checkpoint(f"{ARCH}:{path}", base=world["base"])
    assert clip.info["format"] == "agft"
    assert all(p.dtype == torch.float32 for p in clip.model.parameters())
    _assert_same_logits(clip, world["reference"])


@pytest.mark.parametrize("name, prefix", [("fare_eps_2.pt", ""), ("tecoa_eps_4.pt", ""), ("simclip4.pt", ""),
                                          ("wrapped.pt", "module.model."), ("with_visual.pt", "visual.")])
def test_robustvlm_visual_state_dict(world, name, prefix):
    """RobustVLM's ``.pt`` files: ``unwrap_model(model).model.state_dict()``, the bare vision tower (Sim-CLIP too);
    also the same tower saved without unwrapping (``DataParallel(ClipVisionModel)``) or with ``visual.`` kept."""
    path = world["root"] / name
    torch.save({prefix + k: v for k, v in _vision(world["tuned"]).items()}, path)
    clip = load_checkpoint(f"{ARCH}:{path}", base=world["base"])
    assert clip.info["format"] == "visual-only"
    _assert_same_logits(clip, world["reference"])


def test_visual_only_on_gelu_arch_would_differ(world):
    """The check above has teeth: the same weights in the spec's GELU arch give other logits."""
    gelu = open_clip.create_model(ARCH).eval()
    gelu.load_state_dict(world["reference"].state_dict())
    assert not torch.equal(_logits(gelu), _logits(world["reference"]))


# ---------------------------------------------------------------- full OpenCLIP models


@pytest.mark.parametrize("weights_name", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_hf_hub_layout(tmp_path, monkeypatch, weights_name):
    """``hf-hub:chs20/fare2-clip`` and other robust OpenCLIP repos: config + full weights, from the local cache."""
    from huggingface_hub import constants

    model = _quickgelu_model(3)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--chs20--fare2-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _openclip_dir(repo / "snapshots" / commit, _state(model), weights_name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    clip = load_checkpoint("hf-hub:chs20/fare2-clip")
    assert clip.info["format"] == "openclip-state-dict" and clip.base_spec is None
    _assert_same_logits(clip, model)


def test_openclip_training_checkpoint(tmp_path):
    """OpenCLIP's own ``epoch_N.pt`` (robust OpenCLIP-compatible training runs): DDP ``module.`` prefix, scaler."""
    torch.manual_seed(4)
    model = open_clip.create_model(ARCH).eval()
    path = tmp_path / "epoch_2.pt"
    torch.save({"epoch": 2, "name": "robust-run", "state_dict": {"module." + k: v for k, v in _state(model).items()},
                "optimizer": {"state": {}, "param_groups": []}, "scaler": {"scale": 65536.0}}, path)
    clip = load_checkpoint(f"{ARCH}:{path}")
    assert clip.info["format"] == "openclip-training-dict"
    _assert_same_logits(clip, model)


# ---------------------------------------------------------------- refused, with one line


def _one_line_error(spec: str, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        load_checkpoint(spec, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_visual_only_without_base_names_the_flag(world):
    path = world["root"] / "tecoa_no_base.pth.tar"
    torch.save(_tecoa_dict(_vision(world["tuned"]), data_parallel=True, best_acc1=np.float64(1.0)), path)
    msg = _one_line_error(f"{ARCH}:{path}")  # tiny-clip has no openai tag to default to
    assert "only vision-tower weights (tecoa)" in msg and "--base ARCH:TAG" in msg and "ARCH:openai" in msg


@pytest.fixture
def openai_tag(tmp_path, monkeypatch, world):
    """Give tiny-clip an ``openai`` tag (QuickGELU, as OpenAI's) whose weights, the base's, sit in the local cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pcfg = {"hf_hub": "someorg/tiny-clip.openai/", "quick_gelu": True, **OPENAI_PREPROCESS}
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda arch, tag: pcfg if (arch, tag) == (ARCH, "openai") else real(arch, tag))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-clip.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(world["base_state"], str(repo / "snapshots" / commit / "open_clip_model.safetensors"))


@pytest.mark.parametrize("fmt", ["tecoa", "agft"])
def test_openai_only_formats_default_to_the_openai_base(world, openai_tag, fmt):
    """TeCoA/PMG-AFT/TGA-ZSR and AGFT code always starts from OpenAI's CLIP, so their base defaults to ARCH:openai."""
    path = world["root"] / f"{fmt}_default_base.pth"
    vision = _vision(world["tuned"])
    payload = (_tecoa_dict(vision, data_parallel=True, best_acc1=np.float64(1.0)) if fmt == "tecoa"
               else {"modules": {"clip.visual": vision}, "params": {}})
    torch.save(payload, path)
    clip = load_checkpoint(f"{ARCH}:{path}")
    assert clip.base_spec == f"{ARCH}:openai" and clip.info["format"] == fmt
    assert any("no --base given: base tiny-clip:openai" in n for n in clip.info["notes"])
    _assert_same_logits(clip, world["reference"])


def test_plain_visual_only_never_guesses_a_base(world, openai_tag):
    """A bare vision tower may come from any base: without --base it is refused even when ARCH:openai exists."""
    path = world["root"] / "fare_no_base.pt"
    torch.save(_vision(world["tuned"]), path)
    assert "--base ARCH:TAG" in _one_line_error(f"{ARCH}:{path}")


def test_missing_vision_key_is_refused(world):
    vision = _vision(world["tuned"])
    del vision["ln_post.weight"]
    path = world["root"] / "tecoa_missing.pth.tar"
    torch.save(_tecoa_dict(vision, data_parallel=True, best_acc1=np.float64(1.0)), path)
    msg = _one_line_error(f"{ARCH}:{path}", base=world["base"])
    assert "1 missing keys (visual.ln_post.weight)" in msg


def test_pickled_object_in_a_training_dict_is_refused(world):
    path = world["root"] / "with_args.pth.tar"
    torch.save({**_tecoa_dict(_vision(world["tuned"]), data_parallel=False, best_acc1=0.0),
                "args": argparse.Namespace(lr=1e-5)}, path)
    msg = _one_line_error(f"{ARCH}:{path}", base=world["base"])
    assert "pickled Python object (argparse.Namespace)" in msg and "--trust-pickle" in msg


def test_numpy_arrays_stay_refused(world):
    path = world["root"] / "with_array.pth.tar"
    torch.save({**_tecoa_dict(_vision(world["tuned"]), data_parallel=False, best_acc1=np.array([1.0]))}, path)
    assert "pickled Python object" in _one_line_error(f"{ARCH}:{path}", base=world["base"])


def test_agft_prompt_only_checkpoint_is_refused(world):
    path = world["root"] / "agft_vpt.pth"
    torch.save({"modules": {}, "params": {"token_prompt": torch.zeros(1, 5, 768)}}, path)
    msg = _one_line_error(f"{ARCH}:{path}", base=world["base"])
    assert "AGFT" in msg and "token_prompt" in msg and "without VPT" in msg


def test_unknown_modules_name_keys_and_formats(world):
    path = world["root"] / "agft_other.pth"
    torch.save({"modules": {"clip.transformer": {"w": torch.zeros(2)}}, "params": {}}, path)
    msg = _one_line_error(f"{ARCH}:{path}", base=world["base"])
    assert "clip.transformer" in msg and "agft" in msg and "tecoa" in msg and "visual-only" in msg
