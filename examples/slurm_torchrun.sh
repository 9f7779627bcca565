#!/bin/bash
# Multi-node grace-bench under Slurm: one torchrun agent per node (srun), one worker per GPU (torchrun),
# c10d rendezvous on the job's first node. Usage (everything after the subcommand goes to grace-bench):
#
#   sbatch --nodes 2 examples/slurm_torchrun.sh eval ViT-B-32:openai --suite imagenet \
#       --data-root /shared/data --attack aa-standard --out /shared/results
#   sbatch --nodes 4 examples/slurm_torchrun.sh finetune --method grace --base ViT-B-32:openai \
#       --suite imagenet --data-root /shared/data --precision bf16 --out /shared/runs/grace-b32
#
# --out must be on a file system every node sees: rank 0 writes the results / run directory, and every rank
# reads and writes the resume state there. No node downloads anything (HF_HUB_OFFLINE=1): fetch the
# pretrained weights into a shared Hugging Face cache (HF_HOME) once, from a machine with internet access.
# Overrides: GPUS_PER_NODE (default: the GPUs Slurm gave this node), RDZV_HOST (default: the job's first
# node), RDZV_PORT (default 29500), VENV (a virtual environment to activate on every node).
#SBATCH --job-name=grace-bench
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^(eval|finetune)$ ]]; then
    echo "usage: sbatch examples/slurm_torchrun.sh eval|finetune [grace-bench flags ...] --out SHARED_DIR" >&2
    exit 2
fi
if [[ " $* " != *" --out "* && " $* " != *" --out="* ]]; then
    echo "error: pass --out on a shared file system (every node reads and writes it)" >&2
    exit 2
fi
if [[ -n ${VENV:-} ]]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi

NNODES=${SLURM_NNODES:?not inside a Slurm allocation: submit with sbatch (or salloc)}
RDZV_HOST=${RDZV_HOST:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
RDZV_PORT=${RDZV_PORT:-29500}
if [[ -z ${GPUS_PER_NODE:-} ]]; then
    GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
fi
export HF_HUB_OFFLINE=1
CPUS=${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( CPUS > GPUS_PER_NODE ? CPUS / GPUS_PER_NODE : 1 ))}  # per worker

echo "grace-bench $1 on $NNODES node(s) x $GPUS_PER_NODE process(es), rendezvous $RDZV_HOST:$RDZV_PORT" >&2
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
    torchrun \
        --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
        --rdzv_backend c10d --rdzv_endpoint "$RDZV_HOST:$RDZV_PORT" --rdzv_id "${SLURM_JOB_ID:-grace-bench}" \
        --max_restarts 0 \
        -m grace_bench "$@"
