#!/usr/bin/env bash
# One command for the checks only a GPU can make (see benchmarks/gpu_check.py):
#   bash benchmarks/gpu_check.sh                 # CUDA: SD-1.5 sizes at 512 px, under 8 minutes
#   bash benchmarks/gpu_check.sh --device cpu    # the same checks at the tiny size, about a minute
# Writes benchmarks/results/gpu_check.md (gpu_check_cpu.md on a CPU) or --out FILE; exit 1 if a check failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
exec env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
