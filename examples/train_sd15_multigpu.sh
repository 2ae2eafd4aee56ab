#!/usr/bin/env bash
# The paper's recipe (SD-1.5, 512 px) on every GPU of a node with Accelerate; for several
# nodes add --num_machines, --machine_rank and --main_process_ip as usual.
#   bash examples/train_sd15_multigpu.sh VIDEOS_DIR SD15_DIR RUNS_DIR [NUM_GPUS]
# SD15_DIR: a local Stable-Diffusion-1.5 diffusers folder (safetensors). Nothing is downloaded.
set -euo pipefail
videos=${1:?folder of portrait videos}; sd15=${2:?SD-1.5 folder}; runs=${3:?run folder}; gpus=${4:-4}
launch="accelerate launch --multi_gpu --num_processes $gpus --mixed_precision fp16 -m rgbdface.cli.app"

rgbdface prep-depth "$videos" -o "$runs/data" --studio-views 4 --workers 8
# Stage 1: effective batch 32 (per-GPU batch x GPUs x accumulation), lr 1e-5, 30k steps.
$launch train "$runs/data" -o "$runs/stage1" --base "$sd15" --config sd15
$launch finetune-mask "$runs/data" -o "$runs/stage2" -m "$runs/stage1/model" --config sd15
# Stage 3 needs a local AnimateDiff motion adapter (and wav2vec2 folder) named in the recipe:
#   --set motion.motion_adapter_dir=/models/animatediff-motion-adapter-v1-5
$launch train-motion "$runs/data" -o "$runs/stage3" -m "$runs/stage2/model" --config sd15 "${@:5}"
# Every run resumes exactly after preemption: re-run the same line with --resume.
