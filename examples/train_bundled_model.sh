#!/usr/bin/env bash
# Reproduce the bundled model rgbdface-tiny from the portraits in examples/, with the
# project's own commands, on a CPU (about two and a half hours on 2 cores).
#
#   bash examples/train_bundled_model.sh [WORKDIR]
#
# Training identities: astronaut, biden, grace_hopper, cameraman. Held out: obama
# (never seen in training; its studio renders with exact depth are the evaluation set).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/rgbdface-tiny}
mkdir -p "$W"

# 1. Data: 64 px crops, mesh-fitted depth of each photo ("wild"), 200 studio-like renders
#    with exact depth per portrait, and 3 synthetic talking clips (audio + moving mouth).
rgbdface prep-depth examples/astronaut.jpg examples/biden.jpg examples/grace_hopper.jpg examples/cameraman.png \
    -o "$W/data" --size 64 --studio-views 200 --talking-clips 3
rgbdface prep-depth examples/obama.jpg -o "$W/heldout" --size 64 --studio-views 32

# 2. The tiny configuration's own latent codec (real work keeps SD-1.5's VAE).
rgbdface train-vae "$W/data" -o "$W/vae" --image-size 64 --crop 32 --steps 1500 --batch-size 16

# 3. Depth: stage 0 → stage 1 (joint RGB + depth) → stage 2 (masked), on that codec.
#    The tiny model learns the velocity (v-prediction) rather than the noise, and its stage-2 recipe
#    (configs/tiny.json) gives kept latents clean, favours image -> depth masks, mirrors half the
#    samples and gives image -> depth samples their own image as the reference: see "Where this
#    differs from the paper" in the README. Stage 2 ships the moving average of its weights (decay
#    0.998, about the last 500 steps), chosen on the identity folds of examples/crossval_identities.sh.
rgbdface init-model --tiny --vae "$W/vae" --prediction-type v_prediction -o "$W/stage0" --overwrite
rgbdface train "$W/data" -o "$W/run1" -m "$W/stage0" --config tiny --overwrite
rgbdface finetune-mask "$W/data" -o "$W/run2" -m "$W/run1/model" --config tiny --max-steps 2000 \
    --set optim.ema=true --set optim.ema_decay=0.998 --overwrite

# 4. Appearance: generation and talk copy their reference's colours and background (README, "Faces on
#    a held-out identity"). A codec shown 80 % of its RGB crops in random colours, so that it keeps any
#    colour; a schedule that ends in pure noise; 16 mixed identities (each portrait's shape under each
#    portrait's skin, a skin tone of their own); stage 1 with the studio renders drawn, with their
#    reference, over their photo or a random colour field, target and reference recoloured alike, 30 %
#    of samples their own reference, 5000 steps (three runs, each from the last); then stage 3 for 300
#    steps with the mouth weighted 5 times.
cp -r "$W/data" "$W/data-mix"
rgbdface prep-depth examples/astronaut.jpg examples/biden.jpg examples/grace_hopper.jpg examples/cameraman.png \
    -o "$W/data-mix" --size 64 --studio-views 200 --talking-clips 3 --studio-mix 80
rgbdface train-vae "$W/data" -o "$W/vae-colour" --image-size 64 --crop 32 --steps 1500 --batch-size 16 --colour-jitter 0.8
rgbdface init-model --tiny --vae "$W/vae-colour" --prediction-type v_prediction --zero-terminal-snr -o "$W/stage0-colour" --overwrite
APPEARANCE="--set data.photo_background=0.5 --set data.random_background=1.0 --set data.colour_jitter=0.8 --set data.colour_hue=1.0"
FROM="$W/stage0-colour"
for RUN in "a1 1500" "a2 1500" "a3 2000"; do set -- $RUN
    rgbdface train "$W/data-mix" -o "$W/$1" -m "$FROM" --config tiny $APPEARANCE --set data.same_reference=0.3 \
        --max-steps "$2" --overwrite
    FROM="$W/$1/model"
done
rgbdface train-motion "$W/data-mix" -o "$W/run3" -m "$FROM" --config tiny $APPEARANCE --set loss.mouth_weight=5 \
    --max-steps 300 --overwrite
#    Then the audio parts alone (the temporal modules kept), at a higher learning rate, on talking clips whose jaw
#    opens twice as wide: at 64 px the default clips move the mouth by about a pixel, too little for the audio to
#    be learned from (benchmarks/results/audio_effect_models.md).
rgbdface prep-depth examples/astronaut.jpg examples/biden.jpg examples/grace_hopper.jpg examples/cameraman.png \
    -o "$W/data-jaw" --size 64 --studio-views 200 --talking-clips 6 --talk-jaw 30 --studio-mix 80
rgbdface train-motion "$W/data-jaw" -o "$W/run4" -m "$W/run3/model" --config tiny $APPEARANCE --set loss.mouth_weight=5 \
    --set motion.train=audio --set optim.lr=0.001 --max-steps 600 --overwrite

# 5. One model: the appearance model, with stage 2 of step 3 keeping the codec and schedule it was trained
#    with (take_masked(own_codec=True): depth estimation and depth -> image run exactly as that model's).
#    Shipped with float16 weights, and evaluated on the held-out identity (Table 1 style). Image -> depth
#    defaults to one denoising step for this model (chosen on new poses of the training portraits,
#    `prep-depth --studio-views 16 --seed 7`: one step beat 4 steps and 10 steps with an ensemble of 3). Talk
#    guides on the reference by default (guidance 2: over seeds 0-2 a face in 0.87 of frames against 0.67, colour
#    dE 10.7 against 13.8).
python - "$W/run4/model" "$W/run2/model" rgbdface/weights/rgbdface-tiny <<'PY'
import sys
from rgbdface.models.model import load_model
model = load_model(sys.argv[1])
model.take_masked(load_model(sys.argv[2]), own_codec=True)
model.meta.depth_steps = 1
model.meta.talk_guidance = 2.0  # talk's guidance on the reference by default (benchmarks/results/faces_bundled.md)
model.save_pretrained(sys.argv[3], half=True)
PY
rgbdface eval --data "$W/heldout" --method model --method mesh --method plane --method "mean-face:$W/data"
# the faces it makes for the held-out identity: talk on real speech (espeak-ng), a talking clip re-created
# from its first frame, samples from a colour and a black-and-white reference (benchmarks/results/faces_bundled.md)
rgbdface prep-depth examples/obama.jpg -o "$W/heldout-faces" --size 64 --studio-views 32 --talking-clips 1
python benchmarks/measure_faces.py --heldout "$W/heldout-faces" --train-data "$W/data" --label bundled
# 6. The README's tables from eval's own output (the cross-validation table after crossval_identities.sh)
python examples/readme_tables.py "$W"
