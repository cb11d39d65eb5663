#!/usr/bin/env bash
# Trains the model fiberflow ships (both VAE stages, the latent diffusion model, the
# direct predictor and the diffusion model's full-resolution refiner) on a finished
# dataset's whole training split, scores it on the test split beside copy-2D and the 3D
# solve of the slices, and exports the refined diffusion model as a model bundle.
#
#   scripts/train_shipped.sh DATA OUT [TRAIN_DEVICE]
#
# DATA: the dataset, made by
#   fiberflow generate --out DATA --samples 1000 --seed 2026
# OOD (optional, environment): a dataset of a packing family the model is not trained on,
# scored whole (`evaluate --split all`) and recorded in the card; DATA_COMMIT (optional):
# the fiberflow commit that generated DATA, recorded in the card.
# TRAIN_DEVICE: `libtorch` (default; the build of scripts/setup-libtorch.sh, ~3.5x faster
# on CPUs than the default backend) or `cpu`. Everything resumes: rerun the same command
# after a kill and finished stages are skipped, the running one goes on from its last
# checkpoint. Epoch counts are environment variables (EPOCHS_VAE1, EPOCHS_VAE2,
# EPOCHS_LATENT for the diffusion model, EPOCHS_DIRECT for the direct predictor,
# EPOCHS_REFINER for the refiner); validation
# uses the first VAL_SAMPLES of the validation split; LATENT_SET holds config overrides of
# both latent networks (default: features folded into the latent grid, which measured
# better than averaged ones; add mirror_augmentation=true for the augmentation the shipped
# model was trained without, see BENCHMARKS.md).
set -euo pipefail

data=${1:?usage: train_shipped.sh DATA OUT [TRAIN_DEVICE]}
out=${2:?usage: train_shipped.sh DATA OUT [TRAIN_DEVICE]}
device=${3:-libtorch}
bin=${FIBERFLOW:-target/release/fiberflow}
train_bin=$bin
[ "$device" = cpu ] || train_bin=${FIBERFLOW_TRAIN:-target/libtorch/release/fiberflow}
e1=${EPOCHS_VAE1:-30}
e2=${EPOCHS_VAE2:-15}
e3=${EPOCHS_LATENT:-80}
e4=${EPOCHS_DIRECT:-80}
e5=${EPOCHS_REFINER:-16}
val=${VAL_SAMPLES:-32}
latent_set=()
latent_default="fold_features=true"
read -ra overrides <<<"${LATENT_SET-$latent_default}"
for kv in "${overrides[@]}"; do latent_set+=(--set "$kv"); done
mkdir -p "$out"

common=(--set "val_samples=$val" --device "$device" --resume)
# The KL weight warms up over the first two thirds of stage 1, as in the quickstart.
"$train_bin" train vae --stage 1 --dataset "$data" --out "$out/vae1" --epochs "$e1" \
    --set "kl_warmup_epochs=$(((2 * e1 + 2) / 3))" "${common[@]}"
"$train_bin" train vae --stage 2 --dataset "$data" --stage1 "$out/vae1" --out "$out/vae2" \
    --epochs "$e2" "${common[@]}"
"$train_bin" train diffusion --dataset "$data" --vae "$out/vae2" --out "$out/diffusion" \
    --epochs "$e3" "${latent_set[@]}" "${common[@]}"
"$train_bin" train diffusion --dataset "$data" --vae "$out/vae2" --out "$out/direct" \
    --epochs "$e4" --set predictor=direct --set unet.time_conditioned=false \
    "${latent_set[@]}" "${common[@]}"
"$train_bin" train refiner --model "$out/diffusion" --dataset "$data" --out "$out/refiner" \
    --epochs "$e5" "${common[@]}"

# Scores on the whole test split, each written once.
# shellcheck source=scripts/score.sh
source "$(dirname "$0")/score.sh"
score "$out/copy2d.json" "$data" --score copy2d
score "$out/solve3d.json" "$data" --score solve3d
# The diffusion model's point prediction (the posterior mean over 4 starting noises, the
# default), and the mean of 4 draws for comparison.
score "$out/model.json" "$data" --model "$out/diffusion" --samples 4 --symmetrize false
score "$out/model-draws.json" "$data" --model "$out/diffusion" --samples 4 --estimate draw-mean \
    --symmetrize false
score "$out/direct.json" "$data" --model "$out/direct" --symmetrize false
# Both averaged over the input's eight mirror images (one noise per image).
score "$out/model-sym.json" "$data" --model "$out/diffusion"
score "$out/direct-sym.json" "$data" --model "$out/direct"
# That average, refined at full resolution: the default of predict and evaluate.
score "$out/model-refined.json" "$data" --model "$out/refiner"
# "model" (the card's summary line) is what predict and evaluate give by default.
evaluations=(--evaluation "model=$out/model-refined.json"
    --evaluation "model, unrefined=$out/model-sym.json"
    --evaluation "model, as given=$out/model.json"
    --evaluation "model, mean of 4 draws=$out/model-draws.json"
    --evaluation "direct=$out/direct-sym.json" --evaluation "direct, as given=$out/direct.json"
    --evaluation "$out/solve3d.json" --evaluation "$out/copy2d.json")
if [ -n "${OOD:-}" ]; then
    score "$out/ood-copy2d.json" "$OOD" --split all --score copy2d
    score "$out/ood-solve3d.json" "$OOD" --split all --score solve3d
    score "$out/ood-model.json" "$OOD" --split all --model "$out/diffusion" --samples 4 \
        --symmetrize false
    score "$out/ood-direct.json" "$OOD" --split all --model "$out/direct" --symmetrize false
    score "$out/ood-model-sym.json" "$OOD" --split all --model "$out/diffusion"
    score "$out/ood-direct-sym.json" "$OOD" --split all --model "$out/direct"
    score "$out/ood-model-refined.json" "$OOD" --split all --model "$out/refiner"
    evaluations+=(--evaluation "unseen family: model=$out/ood-model-refined.json"
        --evaluation "unseen family: model, unrefined=$out/ood-model-sym.json")
    for label in copy2d solve3d model direct-sym direct; do
        name=${label/-sym/}
        [ "$label" = "$name" ] && [ "$name" != copy2d ] && [ "$name" != solve3d ] &&
            name="$name, as given"
        evaluations+=(--evaluation "unseen family: $name=$out/ood-$label.json")
    done
fi
"$bin" model export "$out/refiner" --out "$out/model.ffmodel" "${evaluations[@]}" \
    ${DATA_COMMIT:+--data-commit "$DATA_COMMIT"} \
    --command "EPOCHS_VAE1=$e1 EPOCHS_VAE2=$e2 EPOCHS_LATENT=$e3 EPOCHS_DIRECT=$e4 EPOCHS_REFINER=$e5 VAL_SAMPLES=$val LATENT_SET='${LATENT_SET-$latent_default}' scripts/train_shipped.sh $data $out $device"
