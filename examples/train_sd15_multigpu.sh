#!/usr/bin/env bash
# The paper's recipe (SD-1.5, 512 px) on GPUs with Accelerate: global batch 32 for stages 1-2
# (per-GPU batch x accumulation x processes, derived here from the number of processes),
# one clip per process for stage 3, lr 1e-5, 30k steps.
#   bash examples/train_sd15_multigpu.sh VIDEOS_DIR SD15_DIR RUNS_DIR [PROCESSES] [extra train-motion options]
# PROCESSES: GPUs over all machines (default 4); 32 must be a multiple of it (1, 2, 4, 8, 16, 32).
# Several machines: run it on each with ACCELERATE_ARGS="--num_machines M --machine_rank R
# --main_process_ip HOST --main_process_port PORT" and the total as PROCESSES.
# 24 GB GPUs: stage 1 needs 8-bit AdamW (pip install bitsandbytes), set by OPTIMIZER (default
# adamw8bit; OPTIMIZER=adamw on 40 GB+ GPUs). See README "Scaling" for the memory per stage.
# SD15_DIR: a local Stable-Diffusion-1.5 diffusers folder (safetensors). Nothing is downloaded.
set -euo pipefail
videos=${1:?folder of portrait videos}; sd15=${2:?SD-1.5 folder}; runs=${3:?run folder}; procs=${4:-4}
global=${GLOBAL_BATCH:-32}; per_gpu_max=${PER_GPU_BATCH:-4}; optimizer=${OPTIMIZER:-adamw8bit}
if (( procs < 1 || global % procs )); then
  echo "train_sd15_multigpu.sh: $procs processes cannot share a global batch of $global evenly; use a divisor of $global" >&2
  exit 2
fi
per_gpu=$(( global / procs ))           # samples per process per optimizer step
batch=$(( per_gpu < per_gpu_max ? per_gpu : per_gpu_max ))
while (( per_gpu % batch )); do batch=$(( batch - 1 )); done
accum=$(( per_gpu / batch ))            # global = batch x accum x procs
multi=$([[ $procs -gt 1 ]] && echo --multi_gpu || true)
launch="accelerate launch $multi --num_processes $procs ${ACCELERATE_ARGS:-} --mixed_precision fp16 -m rgbdface.cli.app"
batch_set=(--set optim.batch_size=$batch --set optim.grad_accum=$accum)
echo "global batch $global = $batch per GPU x $accum accumulation x $procs processes" >&2

rgbdface prep-depth "$videos" -o "$runs/data" --studio-views 4 --workers 8
$launch train "$runs/data" -o "$runs/stage1" --base "$sd15" --config sd15 "${batch_set[@]}" --set optim.optimizer=$optimizer
$launch finetune-mask "$runs/data" -o "$runs/stage2" -m "$runs/stage1/model" --config sd15 "${batch_set[@]}"
# Stage 3 needs a local AnimateDiff motion adapter (and wav2vec2 folder) named in the recipe:
#   --set motion.motion_adapter_dir=/models/animatediff-motion-adapter-v1-5
$launch train-motion "$runs/data" -o "$runs/stage3" -m "$runs/stage2/model" --config sd15 "${@:5}"
# Every run resumes exactly after preemption: re-run the same line with --resume.
