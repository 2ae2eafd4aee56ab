#!/usr/bin/env bash
# Cross-validate the bundled recipe over identities: each training portrait is held out in turn,
# stages 1 and 2 are trained on the other three (the tiny recipe, as examples/train_bundled_model.sh
# trains them), and the fold's model is scored on every studio render of the held-out identity
# against the mean face of the other three and a plane, without and with test-time mirroring (--flip).
#
#   bash examples/crossval_identities.sh WORKDIR
#
# WORKDIR is the bundled model's work folder after examples/train_bundled_model.sh WORKDIR: its
# dataset (data/) and stage 0 (stage0/) are reused. The latent codec (vae/, in stage 0) was trained
# on all four portraits; the denoisers of a fold never see the held-out one. About 15 minutes per
# fold on 2 CPU cores. Results: WORKDIR/crossval/ID-{no-flip,flip}.json (eval --format json).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: crossval_identities.sh WORKDIR (the folder of train_bundled_model.sh)}
C="$W/crossval"
mkdir -p "$C"

for id in grace_hopper astronaut cameraman biden; do
  out="$C/$id"
  rgbdface train "$W/data" -o "$out/run1" -m "$W/stage0" --config tiny --set data.exclude_identities="$id" --overwrite
  rgbdface finetune-mask "$W/data" -o "$out/run2" -m "$out/run1/model" --config tiny --max-steps 2000 \
      --set optim.ema=true --set optim.ema_decay=0.998 --set data.exclude_identities="$id" --overwrite
  # score every studio render of the held-out identity (its 200 views and the frames of its talking clips)
  for flip in --no-flip --flip; do
    rgbdface eval --data "$W/data" --identity "$id" --method "model:$out/run2/model" --method "mean-face:$W/data" --method plane \
        --steps 1 "$flip" --format json > "$C/$id${flip#-}.json"
  done
done

# One table: RMSE (mm) on each held-out identity (`python examples/readme_tables.py WORKDIR` writes the README's)
python - "$C" "$W/data" <<'PY'
import json, sys
from pathlib import Path
folder = Path(sys.argv[1])
print("| held out | images | model | model --flip | mean face of the others | plane |")
print("|---|---:|---:|---:|---:|---:|")
for plain in sorted(folder.glob("*-no-flip.json")):
    ident = plain.name[: -len("-no-flip.json")]
    a, b = json.loads(plain.read_text()), json.loads((folder / f"{ident}-flip.json").read_text())
    model = lambda d: next(v for k, v in d.items() if k.startswith("model"))
    mean = next(v for k, v in a.items() if k.startswith("mean-face"))
    cells = [model(a), model(b), mean, a["plane"]]
    assert all(c["rmse_units"] == "mm" for c in cells), "eval reports RMSE in mm on a dataset"
    print(f"| {ident} | {mean['n_images']} | " + " | ".join(f"{c['rmse']:.2f}" for c in cells) + " |")
PY
