#!/usr/bin/env bash
# BEVT pretraining across nodes under SLURM: one SLURM task per node runs torchrun, which starts
# one process per GPU and meets the other nodes at a c10d rendezvous on the first node.
# `--resume auto` continues from the newest complete checkpoint, so a requeued or resubmitted
# job picks up where the last one stopped.
#
#   sbatch scripts/slurm_pretrain.sh                                   # stage 2, 4 nodes x 8 GPUs
#   CONFIG=swin_b_stage1_in1k sbatch --nodes=2 scripts/slurm_pretrain.sh
#   sbatch scripts/slurm_pretrain.sh data.workers=10 run.out=/scratch/bevt/joint   # overrides
#
# The paper's stage-2 batch (256 clips + 2048 images per step) is 32 GPUs x 4 clips x 2
# accumulation steps; on other GPU counts change optim.accum_steps or data.video_batch_size.
#SBATCH --job-name=bevt-pretrain
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=80
#SBATCH --time=4-00:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${CONFIG:-swin_b_joint_in1k_k400}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

srun --kill-on-bad-exit=1 torchrun \
  --nnodes "$SLURM_NNODES" \
  --nproc_per_node "$GPUS_PER_NODE" \
  --rdzv_id "$SLURM_JOB_ID" \
  --rdzv_backend c10d \
  --rdzv_endpoint "$HEAD_NODE:29500" \
  -m bevt pretrain --config "$CONFIG" --resume auto "$@"
