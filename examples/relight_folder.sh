#!/usr/bin/env bash
# Relight every portrait of a folder under several lights, 2 jobs at a time (find | xargs -P).
#   bash examples/relight_folder.sh PORTRAITS_DIR OUT_DIR [MODEL_DIR]
set -euo pipefail
in=${1:?portrait folder}; out=${2:?output folder}; model=${3:-}
mkdir -p "$out"
export out model
# One depth estimate per portrait, then one cheap relight per light from it.
find "$in" -maxdepth 1 -type f \( -name '*.jpg' -o -name '*.png' \) -print0 |
  xargs -0 -P 2 -I{} bash -c '
    f="$1"; stem=$(basename "${f%.*}")
    rgbdface estimate-depth "$f" -o "$out/$stem.depth.png" ${model:+--model "$model"} -q
    for light in "1,0,1" "-1,0,1" "0,1,1"; do
      rgbdface relight "$f" --depth "$out/$stem.depth.png" --light "$light" --ambient 0.3 \
        -o "$out/$stem.light_${light//,/_}.png" -q
    done' _ {}
ls "$out"
