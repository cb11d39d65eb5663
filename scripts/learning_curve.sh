#!/usr/bin/env bash
# Learning curve of the default pipeline: both VAE stages, the diffusion model and the
# direct predictor trained on nested subsets of one dataset's training split (the first N
# samples of the split), each scored on the whole test split beside the VAE alone, copy-2D
# and the 3D solve of the slices.
#
#   scripts/learning_curve.sh DATA OUT [SIZES] [TRAIN_DEVICE]
#
# DATA: a finished dataset (e.g. `fiberflow generate --out DATA --samples 1000 --seed 2026`);
# SIZES: training-set sizes, default "48 250 700"; TRAIN_DEVICE: `cpu` (default) or
# `libtorch` (a build by scripts/setup-libtorch.sh, ~3.5× faster training on CPUs).
# Every size gets the same number of sample passes per stage (SAMPLE_PASSES_*: about 6×
# the quickstart's), so the curve compares data at equal compute; validation uses the
# first VAL_SAMPLES of the validation split (it runs every epoch). Everything resumes:
# rerun the same command after a kill. Evaluations run on the default CPU backend.
set -euo pipefail

data=${1:?usage: learning_curve.sh DATA OUT [SIZES] [TRAIN_DEVICE]}
out=${2:?usage: learning_curve.sh DATA OUT [SIZES] [TRAIN_DEVICE]}
sizes=${3:-48 250 700}
device=${4:-cpu}
bin=${FIBERFLOW:-target/release/fiberflow}
[ "$device" = cpu ] || bin=${FIBERFLOW:-target/libtorch/release/fiberflow}
passes_vae1=${SAMPLE_PASSES_VAE1:-3200}
passes_vae2=${SAMPLE_PASSES_VAE2:-960}
passes_latent=${SAMPLE_PASSES_LATENT:-3840}
val=${VAL_SAMPLES:-48}
draws=4
mkdir -p "$out"

# Epochs giving at least `passes` sample passes over `n` samples.
epochs() { echo $(( ($1 + $2 - 1) / $2 )); }

# shellcheck source=scripts/score.sh
source "$(dirname "$0")/score.sh"

score "$out/copy2d.json" "$data" --score copy2d
score "$out/solve3d.json" "$data" --score solve3d

for n in $sizes; do
    d="$out/n$n"
    e1=$(epochs "$passes_vae1" "$n")
    e2=$(epochs "$passes_vae2" "$n")
    e3=$(epochs "$passes_latent" "$n")
    limit=(--set "train_samples=$n" --set "val_samples=$val" --device "$device" --resume)
    # Averaged features, as the published curve (BENCHMARKS.md) was trained before folding.
    latent=(--set fold_features=false)
    echo "== n = $n: epochs $e1 / $e2 / $e3"
    # The KL weight warms up over the first two thirds of stage 1, as in the quickstart.
    "$bin" train vae --stage 1 --dataset "$data" --out "$d/vae1" --epochs "$e1" \
        --set "kl_warmup_epochs=$(( (2 * e1 + 2) / 3 ))" "${limit[@]}"
    "$bin" train vae --stage 2 --dataset "$data" --stage1 "$d/vae1" --out "$d/vae2" \
        --epochs "$e2" "${limit[@]}"
    "$bin" train diffusion --dataset "$data" --vae "$d/vae2" --out "$d/diffusion" \
        --epochs "$e3" "${latent[@]}" "${limit[@]}"
    "$bin" train diffusion --dataset "$data" --vae "$d/vae2" --out "$d/direct" \
        --epochs "$e3" --set predictor=direct --set unet.time_conditioned=false \
        "${latent[@]}" "${limit[@]}"
    # As published: the mean of the draws, the input as given.
    score "$d/model.json" "$data" --model "$d/diffusion" --samples "$draws" \
        --estimate draw-mean --symmetrize false
    score "$d/direct.json" "$data" --model "$d/direct" --symmetrize false
    score "$d/vae_only.json" "$data" --model "$d/diffusion" --score vae
done

# One table: relative L2 error over the fluid (test split) and training wall time.
python3 - "$out" $sizes <<'EOF'
import json, sys, pathlib
out, sizes = pathlib.Path(sys.argv[1]), sys.argv[2:]

def errors(path):
    report = json.loads(path.read_text())
    m = {x["name"]: x["mean"] for x in report["summary"]["metrics"]}
    return "{:.3f} / {:.3f} / {:.3f}".format(m["rel_l2_u"], m["rel_l2_v"], m["rel_l2_w"])

def minutes(run):
    log = json.loads((run / "log.json").read_text())
    return sum(e["seconds"] for e in log["history"]) / 60

print("| predictor | training samples | vx / vy / vz | training min |")
print("|---|---|---|---|")
for name in ["copy2d", "solve3d"]:
    print(f"| {name} | – | {errors(out / (name + '.json'))} | – |")
for n in sizes:
    d = out / f"n{n}"
    vae = minutes(d / "vae1") + minutes(d / "vae2")
    for name, run in [("model", "diffusion"), ("direct", "direct"), ("vae_only", None)]:
        train = vae + (minutes(d / run) if run else 0.0)
        print(f"| {name} | {n} | {errors(d / (name + '.json'))} | {train:.1f} |")
EOF
