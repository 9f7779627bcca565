"""The bad-input battery: every subcommand, fed a broken path, file, folder, config or flag value, prints exactly
one ``error: ...`` line on stderr, exits 2, shows no traceback, and leaves the workspace as it was (no new or
partial file anywhere, so nothing is written outside --out either).

Each case builds its inputs in a fresh workspace (the current directory of the in-process CLI run), snapshots
the workspace, runs ``grace_bench.cli.main`` and compares. Cases are tiny (tiny-clip weights, micro with
``--limit``, ``--attack none`` where an attack is not the point) so the whole table runs in seconds.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grace_bench.cli import main
from tests.test_leaderboard import METHODS, fingerprint, summary_dict

# Cases that fail on this branch only because another helper's fix is not merged yet (see the lead's issue):
# delete this set after merging those branches; a case in it that passes makes the test fail (strict xfail).
LOCK_SUFFIXES = (".lock",)
TINY = "tiny-clip"


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Files shared by the cases (outside every workspace): tiny-clip weights and a pickled module."""
    from grace_bench.models.loading import build_clip_model
    from grace_bench.utils.atomic import atomic_save_safetensors

    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    clip = build_clip_model(TINY)
    weights = root / "tiny.safetensors"
    atomic_save_safetensors(weights, clip.model.state_dict(), metadata={"arch": TINY})
    module = root / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    zipped = root / "zipped.pt"
    torch.save({"w": torch.zeros(64)}, zipped)
    return {"weights": weights, "module": module, "zipped": zipped}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (lock files aside) with its size and modification time."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(LOCK_SUFFIXES):
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def make_read_only(folder: Path, monkeypatch) -> None:
    """Make ``folder`` read-only: chmod for ordinary users; as root (which writes anywhere) refuse every file
    creation under it in this process."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    guarded = str(folder.resolve())

    def inside(p) -> bool:
        return str(Path(os.fspath(p)).resolve()).startswith(guarded)

    def deny(what) -> PermissionError:
        return PermissionError(13, "Permission denied", str(what))

    real_mkstemp, real_open, real_mkdir = tempfile.mkstemp, builtins.open, os.mkdir

    def mkstemp(*a, dir=None, **k):  # noqa: A002 - tempfile's own argument name
        if dir is not None and inside(dir):
            raise deny(dir)
        return real_mkstemp(*a, dir=dir, **k)

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and inside(file):
            raise deny(file)
        return real_open(file, mode, *a, **k)

    def mkdir(path, *a, **k):
        if inside(path):
            raise deny(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


# ----------------------------------------------------------------------------------------------- inputs


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def summary_file(ws: Path, **changes) -> Path:
    data = summary_dict("grace", METHODS["grace"])
    data.update(changes)
    return write(ws / "results" / f"summary-{fingerprint('grace')[:12]}.json", json.dumps(data))


def png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 20, 20)).save(path)


def imagenet_r_tree(ws: Path, with_image: int) -> Path:
    """``ws/data/imagenet-r`` with the 200 wnid folders, the first ``with_image`` holding one PNG each."""
    from grace_bench.data import imagenet_meta as meta

    root = ws / "data" / "imagenet-r"
    for i, wnid in enumerate(meta.imagenet_r_wnids()):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        if i < with_image:
            png(root / wnid / "a.png", value=i)
    return root


def truncated_jpeg(path: Path) -> None:
    """A JPEG whose header parses (it passes the load-time check) but whose pixel data is cut in half."""
    pixels = np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    write(path, buf.getvalue()[: len(buf.getvalue()) // 2])


def eval_tiny(ws: Path, assets, ckpt: str | None = None, *extra: str, attack: str = "none", suite: str = "micro",
              limit: str = "4") -> list[str]:
    """``eval`` of micro-CLIP (or ``ckpt``) on micro, 4 images, no attack, into ``ws/out``."""
    return ["eval", ckpt or "micro", "--suite", suite, "--limit", limit, "--attack", attack,
            "--out", str(ws / "out"), "--no-progress", "--workers", "0", *extra]


def eval_imagenet_r(ws: Path, assets, *extra: str) -> list[str]:
    templates = write(ws / "templates.txt", "a photo of a {}.\n")
    return ["eval", f"{TINY}:{assets['weights']}", "--suite", "imagenet", "--data-root", str(ws / "data"),
            "--datasets", "imagenet-r", "--adv-datasets", "imagenet-r", "--attack", "none", "--templates",
            str(templates), "--out", str(ws / "out"),
            "--no-progress", "--batch-size", "8", *extra]


def corrupt_checkpoint(kind: str) -> Callable[[Path, dict], list[str]]:
    def build(ws: Path, assets) -> list[str]:
        path = ws / f"{kind}.pt"
        if kind == "random-bytes":
            write(path, np.random.RandomState(1).bytes(4096))
        elif kind == "empty":
            write(path, b"")
        elif kind == "truncated-zip":
            data = assets["zipped"].read_bytes()
            write(path, data[: len(data) // 2])
        elif kind == "truncated-safetensors":
            path = write(ws / "cut.safetensors", assets["weights"].read_bytes()[:40])
        return eval_tiny(ws, assets, f"{TINY}:{path}")
    return build


def leaderboard(ws: Path, *extra: str) -> list[str]:
    return ["leaderboard", "build", str(ws / "results"), "--out", str(ws / "board"), *extra]


def compare(ws: Path, *extra: str) -> list[str]:
    return ["compare", "--quick", "--work", str(ws / "work"), "--out", str(ws / "study"), "--stages", "pretrain",
            "--no-progress", *extra]


def corrupt_recipe(ws: Path, _assets) -> list[str]:
    write(ws / "work" / "recipe.json", '{"identity": {"suite": "micro", ')
    return compare(ws)


def wrong_typed_recipe(ws: Path, _assets) -> list[str]:
    write(ws / "work" / "recipe.json", json.dumps({"identity": ["not", "an", "object"]}))
    return compare(ws)


def corrupt_timings(ws: Path, _assets) -> list[str]:
    write(ws / "work" / "timings.json", "[1, 2")
    return compare(ws)


def read_only(target: str, argv: Callable[[Path, dict], list[str]]):
    """Mark a case whose ``ws/target`` folder is made read-only after the inputs are built."""
    argv.read_only = target  # type: ignore[attr-defined]
    return argv


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path, dict], list[str]]
    match: str = ""  # regex the error line must match (besides starting with "error: ")


CASES = [
    # ---- eval: checkpoints
    Case("eval-missing-checkpoint", lambda ws, a: eval_tiny(ws, a, f"{TINY}:{ws / 'nope.safetensors'}"),
         "not found"),
    Case("eval-unknown-checkpoint-format",
         lambda ws, a: (torch.save({"epoch": 3, "notes": "x"}, ws / "odd.pt"),
                        eval_tiny(ws, a, f"{TINY}:{ws / 'odd.pt'}"))[1],
         "not a checkpoint format"),
    Case("eval-random-bytes-checkpoint", corrupt_checkpoint("random-bytes"), "corrupt or unreadable"),
    Case("eval-empty-checkpoint", corrupt_checkpoint("empty"), "empty file"),
    Case("eval-truncated-zip-checkpoint", corrupt_checkpoint("truncated-zip"), "corrupt or unreadable"),
    Case("eval-truncated-safetensors", corrupt_checkpoint("truncated-safetensors"), "corrupt or unreadable"),
    Case("eval-pickled-module", lambda ws, a: eval_tiny(ws, a, f"{TINY}:{a['module']}"), "--trust-pickle"),
    Case("eval-unknown-arch", lambda ws, a: eval_tiny(ws, a, f"no-such-arch:{a['weights']}"), ""),
    # ---- eval: flags and config files
    Case("eval-eps-not-a-number", lambda ws, a: eval_tiny(ws, a, None, "--eps", "abc", "--n-adv", "2", attack="pgd"),
         "abc"),
    Case("eval-negative-n-adv", lambda ws, a: eval_tiny(ws, a, None, "--n-adv", "-5", attack="pgd"), "n-adv"),
    Case("eval-unknown-attack", lambda ws, a: eval_tiny(ws, a, attack="no-such-attack"), "no-such-attack"),
    Case("eval-unknown-suite", lambda ws, a: eval_tiny(ws, a, suite="no-such-suite"), "no-such-suite"),
    Case("eval-unknown-dataset", lambda ws, a: eval_tiny(ws, a, None, "--datasets", "no-such-dataset"),
         "no-such-dataset"),
    Case("eval-limit-zero", lambda ws, a: eval_tiny(ws, a, limit="0"), "limit"),
    Case("eval-missing-templates-file", lambda ws, a: eval_tiny(ws, a, None, "--templates", str(ws / "none.txt")),
         "none.txt"),
    Case("eval-out-is-a-file", lambda ws, a: (write(ws / "out", "x"), eval_tiny(ws, a))[1], "out"),
    Case("eval-read-only-out", read_only("out", lambda ws, a: eval_tiny(ws, a)), "writable"),
    # ---- eval: image folders
    Case("eval-missing-data-root", lambda ws, a: [x for x in eval_imagenet_r(ws, a) if x not in
                                                  ("--data-root", str(ws / "data"))], "data-root"),
    Case("eval-empty-class-folders", lambda ws, a: (imagenet_r_tree(ws, 3), eval_imagenet_r(ws, a))[1],
         r"197 class folder.*allow-empty-classes"),
    Case("eval-no-readable-image", lambda ws, a: (imagenet_r_tree(ws, 0), eval_imagenet_r(ws, a))[1],
         "no readable images"),
    # ---- convert
    Case("convert-corrupt-source", lambda ws, a: ["convert", str(write(ws / "r.pt", b"\x80\x02garbage" * 40)),
                                                   str(ws / "out.safetensors"), "--arch", TINY],
         "corrupt or unreadable"),
    Case("convert-wrong-suffix", lambda ws, a: ["convert", str(a["weights"]), str(ws / "out.bin"), "--arch", TINY],
         "safetensors"),
    Case("convert-unknown-arch", lambda ws, a: ["convert", str(a["weights"]), str(ws / "o.safetensors"), "--arch",
                                                "no-such-arch"], "no-such-arch"),
    # ---- leaderboard
    Case("leaderboard-corrupt-summary",
         lambda ws, a: (write(ws / "results" / "summary-0123456789ab.json", '{"schema": '), leaderboard(ws))[1],
         "not valid JSON"),
    Case("leaderboard-binary-summary",
         lambda ws, a: (write(ws / "results" / "summary-0123456789ab.json", b"\xff\xfe\x00garbage"),
                        leaderboard(ws))[1], "not valid JSON"),
    Case("leaderboard-wrong-typed-summary", lambda ws, a: (summary_file(ws, per_dataset=[1, 2]), leaderboard(ws))[1],
         "per_dataset"),
    Case("leaderboard-wrong-typed-protocol", lambda ws, a: (summary_file(ws, protocol="Linf"), leaderboard(ws))[1],
         "protocol"),
    Case("leaderboard-wrong-schema", lambda ws, a: (summary_file(ws, schema="other/v9"), leaderboard(ws))[1],
         "schema"),
    Case("leaderboard-no-results", lambda ws, a: ((ws / "results").mkdir(), leaderboard(ws))[1], "no summary"),
    Case("leaderboard-missing-results", lambda ws, a: leaderboard(ws), "no such file"),
    Case("leaderboard-out-is-a-file", lambda ws, a: (summary_file(ws), write(ws / "board", "x"), leaderboard(ws))[2],
         "is a file"),
    Case("leaderboard-read-only-out", read_only("board", lambda ws, a: (summary_file(ws), leaderboard(ws))[1]),
         "not writable"),
    Case("leaderboard-card-meta-list",
         lambda ws, a: (summary_file(ws), leaderboard(ws, "--card-meta", str(write(ws / "m.json", "[1]"))))[1],
         "m.json"),
    Case("leaderboard-corrupt-geometry",
         lambda ws, a: (summary_file(ws), write(ws / "results" / "geometry-hessian-0123456789ab.json", "{"),
                        leaderboard(ws))[2], "not valid JSON"),
    # ---- compare
    Case("compare-corrupt-recipe", corrupt_recipe, "recipe.json"),
    Case("compare-wrong-typed-recipe", wrong_typed_recipe, "recipe.json"),
    Case("compare-corrupt-timings", corrupt_timings, "timings.json"),
    Case("compare-out-is-a-file", lambda ws, a: (write(ws / "study", "x"), compare(ws))[1], "is a file"),
    Case("compare-work-is-a-file", lambda ws, a: (write(ws / "work", "x"), compare(ws))[1], "is a file"),
    Case("compare-read-only-out", read_only("study", lambda ws, a: compare(ws)), "not writable"),
    Case("compare-unknown-method", lambda ws, a: compare(ws, "--methods", "no-such-method"), "no-such-method"),
    Case("compare-unknown-stage", lambda ws, a: [*compare(ws)[:-2], "no-such-stage", "--no-progress"],
         "no-such-stage"),
    Case("compare-corrupt-lr-file", lambda ws, a: compare(ws, "--lr-file", str(write(ws / "t.json", "{oops"))),
         "t.json"),
    # ---- finetune, wise, geometry, plot
    Case("finetune-unknown-method", lambda ws, a: ["finetune", "--method", "no-such-method", "--out",
                                                   str(ws / "run"), "--no-progress"], "no-such-method"),
    Case("finetune-malformed-config", lambda ws, a: ["finetune", "--method", "ft", "--config",
                                                     str(write(ws / "c.yaml", "lr: [1, 2\nsteps: {")),
                                                     "--out", str(ws / "run"), "--no-progress"], "c.yaml"),
    Case("finetune-corrupt-config-on-resume",
         lambda ws, a: ["finetune", "--method", "ft", "--out", str(write(ws / "run" / "config.json", "{").parent),
                        "--resume", "--no-progress"], "config.json"),
    Case("wise-bad-alpha", lambda ws, a: ["wise", "micro", "micro", "--alpha", "abc", "--out", str(ws / "w"),
                                          "--no-progress"], "alpha"),
    Case("geometry-missing-checkpoint", lambda ws, a: ["geometry", "weights", str(ws / "nope.safetensors"), "--ref",
                                                       "micro", "--out", str(ws / "g"), "--no-progress"], "nope"),
    Case("plot-corrupt-summary",
         lambda ws, a: (write(ws / "results" / "summary-0123456789ab.json", "nope"),
                        ["plot", "tradeoff", str(ws / "results"), "--out", str(ws / "figs")])[1], "not valid JSON"),
    Case("plot-corrupt-npz",
         lambda ws, a: (write(ws / "g" / "geometry-landscape-0123456789ab.json",
                              json.dumps({"schema": "grace-bench/geometry/v1", "kind": "landscape", "mode": "1d"})),
                        write(ws / "g" / "geometry-landscape-0123456789ab.npz", b"PK\x03\x04 cut short"),
                        ["plot", "landscape", str(ws / "g"), "--out", str(ws / "figs")])[2], "npz"),
    Case("plot-garbled-training-log",
         lambda ws, a: (write(ws / "run" / "log.jsonl", '{"step": 1, "loss": 0.5}\n{"step": 2, "lo\n'),
                        ["plot", "training", str(ws / "run"), "--out", str(ws / "figs")])[1], "log.jsonl"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, assets, tmp_path, monkeypatch, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    argv = case.argv(ws, assets)
    if getattr(case.argv, "read_only", None):
        make_read_only(ws / case.argv.read_only, monkeypatch)
    before = snapshot(ws)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in out + err
    assert code == 2, f"exit {code}; stderr: {err[-500:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line: {err[-800:]}"
    if case.match:
        import re

        assert re.search(case.match, lines[0]), lines[0]
    assert snapshot(ws) == before, "the failed command created or changed files"


def test_every_subcommand_is_covered():
    covered = {c.id.split("-")[0] for c in CASES}
    assert {"eval", "convert", "leaderboard", "compare", "finetune", "wise", "geometry", "plot"} <= covered


# ----------------------------------------------------------------------------------------------- beyond the table


@pytest.mark.parametrize("workers", [2])
def test_error_in_loader_worker_is_one_line(workers, assets, tmp_path):
    """A JPEG that passes the load-time header check but cannot be decoded: the DataLoader worker raises the
    UserError; the CLI prints its one original line (torch re-raises it with the worker's whole traceback)."""
    ws = tmp_path / "ws"
    root = imagenet_r_tree(ws, 200)
    truncated_jpeg(root / sorted(p.name for p in root.iterdir())[5] / "cut.jpg")
    argv = eval_imagenet_r(ws, assets, "--workers", str(workers))
    before = snapshot(ws)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "grace_bench", *argv], capture_output=True, text=True, cwd=ws, env=env,
                       timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode == 2, r.stderr[-1000:]
    assert "Traceback" not in r.stderr and "DataLoader worker" not in r.stderr, r.stderr[-1000:]
    assert r.stderr.strip().splitlines() == errors and len(errors) == 1 and "cut.jpg" in errors[0], r.stderr
    assert snapshot(ws) == before


def test_one_line_message_unwraps_a_worker_traceback():
    from grace_bench.errors import UserError, one_line_message

    wrapped = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\n    raise UserError(msg)\n"
                        "grace_bench.errors.UserError: ds: cannot decode a.jpg (OSError: truncated); delete it\n")
    assert one_line_message(wrapped) == "ds: cannot decode a.jpg (OSError: truncated); delete it"
    assert one_line_message(UserError("plain: fix it")) == "plain: fix it"


def test_allow_empty_classes_evaluates_and_counts_them(assets, tmp_path, monkeypatch, capsys):
    """With --allow-empty-classes the 197 empty folders are evaluated around, and counted in the results."""
    ws = tmp_path / "ws"
    imagenet_r_tree(ws, 3)
    monkeypatch.chdir(tmp_path)
    assert main(eval_imagenet_r(ws, assets, "--workers", "0", "--allow-empty-classes")) == 0
    summary = json.loads(next((ws / "out").rglob("summary-*.json")).read_text())
    entry = summary["per_dataset"]["imagenet-r"]
    assert entry["n"] == 3 and entry["n_empty_classes"] == 197
    clean = json.loads(Path(entry["result_file"]).read_text())
    assert clean["metrics"]["data_report"]["n_empty_folders"] == 197


def test_folder_of_unreadable_images_counts_as_empty(tmp_path):
    """A class folder whose only image is unreadable (or that holds no image file) is an empty class too."""
    from grace_bench.data import imagenet as inet
    from grace_bench.data.suites import DataContext
    from grace_bench.errors import UserError
    from grace_bench.utils.transforms import pixel_preprocess

    root = imagenet_r_tree(tmp_path, 200)
    first, second = sorted(p.name for p in root.iterdir())[:2]
    (root / first / "a.png").write_bytes(b"not a png")
    (root / second / "a.png").unlink()
    write(root / second / "README.txt", "notes")
    ctx = DataContext(root=tmp_path / "data", preprocess=pixel_preprocess(8), image_size=8)
    with pytest.warns(UserWarning), pytest.raises(UserError, match=f"2 class folder.*{first}, {second}"):
        inet.imagenet_r(ctx)
    ctx = DataContext(root=tmp_path / "data", preprocess=pixel_preprocess(8), image_size=8, allow_empty_classes=True)
    with pytest.warns(UserWarning):
        ds = inet.imagenet_r(ctx)
    assert len(ds) == 198 and sorted(ds.empty_folders) == [first, second]


@pytest.mark.parametrize("field, value", [
    ("norm", "../../../escaped-norm"), ("norm", "/tmp/grace-bench-escape-E"), ("norm", "a\x00b/../../x"),
    ("label", "../../../escaped-label"), ("label", ".."), ("suite", "../../../escaped-suite"),
])
def test_leaderboard_names_from_a_summary_stay_inside_out(field, value, tmp_path, monkeypatch, capsys):
    """A crafted summary (norm, label or suite holding ``../``, an absolute path or a NUL byte) still builds, and
    every file it writes lies inside --out."""
    ws = tmp_path / "ws"
    data = summary_dict("grace", METHODS["grace"])
    if field == "norm":
        data["adversarial"]["micro"]["norm"] = value
        data["protocol"]["norm"] = value
    else:
        data[field] = value
    write(ws / "in" / "results" / f"summary-{fingerprint('grace')[:12]}.json", json.dumps(data))
    outside = Path("/tmp/grace-bench-escape-E")
    monkeypatch.chdir(ws)
    before = snapshot(tmp_path)
    assert main(["leaderboard", "build", str(ws / "in"), "--out", str(ws / "in" / "a" / "b" / "board")]) == 0
    new = [p for p in snapshot(tmp_path) if p not in before]
    assert new and all(p.startswith("ws/in/a/b/board/") for p in new), new
    assert not outside.exists()
    assert any("/robustbench/" in p for p in new) and any("/clip_benchmark/" in p for p in new)


@pytest.mark.parametrize("kind", ["random-bytes", "pickle-header-garbage", "empty", "truncated-zip",
                                  "truncated-legacy-pickle", "truncated-safetensors"])
@pytest.mark.parametrize("trust", [False, True])
def test_corrupt_checkpoint_is_never_called_a_pickle(kind, trust, assets, tmp_path):
    from grace_bench.errors import UserError
    from grace_bench.models.checkpoints import read_checkpoint_file

    path = tmp_path / "ckpt.pt"
    if kind == "random-bytes":
        write(path, np.random.RandomState(2).bytes(2048))
    elif kind == "pickle-header-garbage":  # a valid protocol-2 header, then noise
        write(path, b"\x80\x02" + np.random.RandomState(3).bytes(512))
    elif kind == "empty":
        write(path, b"")
    elif kind == "truncated-zip":
        write(path, assets["zipped"].read_bytes()[:300])
    elif kind == "truncated-legacy-pickle":
        torch.save({"w": torch.zeros(64)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
        write(path, (tmp_path / "legacy.pt").read_bytes()[:200])
    else:
        data = assets["weights"].read_bytes()
        write(path, data[: len(data) - 100])
    with pytest.raises(UserError, match="corrupt or unreadable|empty file") as err:
        read_checkpoint_file(path, trust_pickle=trust)
    assert "pickled Python object" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("zipped", [True, False])
def test_real_pickled_module_gets_the_trust_pickle_advice(zipped, tmp_path):
    from grace_bench.errors import UserError
    from grace_bench.models.checkpoints import read_checkpoint_file

    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path, _use_new_zipfile_serialization=zipped)
    advice = r"pickled Python object \(torch\.nn\.modules\.linear\.Linear\).*--trust-pickle"
    with pytest.raises(UserError, match=advice):
        read_checkpoint_file(path)
    assert isinstance(read_checkpoint_file(path, trust_pickle=True), torch.nn.Linear)
