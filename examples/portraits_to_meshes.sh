#!/usr/bin/env bash
# A folder of portraits → 16-bit depth maps, colour previews and coloured meshes.
#   bash examples/portraits_to_meshes.sh PORTRAITS_DIR OUT_DIR [MODEL_DIR]
set -euo pipefail
in=${1:?portrait folder}; out=${2:?output folder}; model=${3:+--model $3}
mkdir -p "$out"
# Folders are searched recursively; existing outputs are skipped, so a re-run resumes.
rgbdface estimate-depth "$in" -o "$out" --preview --mesh ply $model
ls "$out"
