"""Multi-node launch: examples/slurm_torchrun.sh, run as two "nodes" on one machine, matches one process.

A stand-in ``srun`` starts the script's ``torchrun`` agent twice (``--nnodes 2 --nproc_per_node 1``), with a
c10d rendezvous on 127.0.0.1 and gloo on the CPU. Both agents must join (world size 2 is recorded), and every
result file must carry the same numbers and robust flags as a single-process run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "slurm_torchrun.sh"
# 61 images per dataset: an uneven split over two ranks and two attack chunks (chunks hold 50)
EVAL_ARGS = ["--threads", "1", "--device", "cpu", "--limit", "61", "--attack", "pgd[steps=2]", "--n-adv", "61",
             "--no-progress"]
FAKE_SRUN = """#!/bin/bash
# stand-in for Slurm's srun: run the command once per node, every node on this machine
while [[ $1 == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$@" > "$FAKE_SRUN_LOGS/node$node.log" 2>&1 &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _results(out: Path) -> dict[str, dict]:
    files = sorted(out.glob("results/*/*.json"))
    assert files, f"no result files under {out}"
    return {f.name: json.loads(f.read_text()) for f in files}


def _numbers(record: dict) -> dict:
    """What must not depend on the launch: accuracies, counts, subset and flags (not timings or devices)."""
    m = record["metrics"]
    keys = ("n", "correct", "top1", "top5", "indices", "clean_flags", "robust_flags", "clean_acc", "robust_acc")
    return {k: m[k] for k in keys if k in m}


def test_slurm_script_uses_only_existing_flags():
    """Every torchrun flag in the script is one torchrun accepts (a typo would only show on a cluster)."""
    text = SCRIPT.read_text()
    launcher = text[text.index("torchrun \\"):]
    flags = set(re.findall(r"(--[a-z_-]+)", launcher))
    from torch.distributed.run import get_args_parser

    known = {o for action in get_args_parser()._actions for o in action.option_strings}
    missing = sorted(flags - known)
    assert flags and not missing, missing


@pytest.mark.slow  # one launch pair: two torchrun agents, ~25 s on 2 shared cores
def test_two_node_launch_equals_single_process(tmp_path):
    from grace_bench.cli import main

    single = tmp_path / "single"
    assert main(["eval", *EVAL_ARGS, "--out", str(single)]) == 0

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    logs = tmp_path / "logs"
    logs.mkdir()
    two = tmp_path / "two-nodes"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "FAKE_SRUN_LOGS": str(logs), "SLURM_NNODES": "2", "SLURM_JOB_ID": "test",
           "GPUS_PER_NODE": "1", "RDZV_HOST": "127.0.0.1", "RDZV_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "eval", *EVAL_ARGS, "--out", str(two)], env=env, capture_output=True,
                          text=True, timeout=300)
    node_logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.iterdir()))
    assert proc.returncode == 0, proc.stderr + node_logs
    assert "2 node(s) x 1 process(es)" in proc.stderr

    a, b = _results(single), _results(two)
    assert a.keys() == b.keys()
    clean = [name for name in b if b[name]["kind"] == "clean"]
    assert clean and all(b[name]["config"]["world_size"] == 2 for name in clean), "both agents joined one job"
    assert any(b[name]["kind"] == "adversarial" for name in b)
    for name in a:
        assert _numbers(b[name]) == _numbers(a[name]), name
        assert _numbers(a[name]), name  # the comparison is not vacuous


def _documented_commands() -> list[str]:
    """Every torchrun / Slurm command shown in the script's header and in the multi-node docs, one line each."""
    lines = []
    docs = [REPO / "docs" / name for name in ("scale-out-multinode.md", "scale-out.md", "multinode.md")]
    for path in (SCRIPT, *(d for d in docs if d.is_file())):
        text = path.read_text()
        if path == SCRIPT:  # the usage examples are comments
            text = "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
        text = re.sub(r"\\\n\s*#?\s*", " ", text)  # join continuation lines
        for line in text.splitlines():
            if re.match(r"\s*(torchrun|sbatch) ", line) and ("-m grace_bench" in line or "slurm_torchrun" in line):
                lines.append(line.strip())
    return lines


def test_documented_launch_commands_parse():
    """The examples users copy parse with torchrun's and grace-bench's own parsers (no unknown flag)."""
    import shlex

    from torch.distributed.run import get_args_parser

    from grace_bench.cli import build_parser

    commands = _documented_commands()
    assert len(commands) >= 5, commands
    for command in commands:
        words = shlex.split(command)
        if "-m" in words and "grace_bench" in words:
            cut = words.index("-m")
            get_args_parser().parse_args([*words[1:cut], "-m", "grace_bench"])  # exits on an unknown flag
            argv = words[cut + 2:]
        else:
            argv = words[words.index(next(w for w in words if w.endswith("slurm_torchrun.sh"))) + 1:]
        assert argv[0] in ("eval", "finetune"), command
        build_parser().parse_args(argv)
