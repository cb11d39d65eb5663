#!/usr/bin/env bash
# fiberflow's main job on its built-in defaults, on a CPU: build, generate a small dataset
# (microstructures + 2D and 3D flows), train both VAE stages. Safe to re-run: every step
# resumes where it stopped. Usage: scripts/quickstart.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/quickstart}

cargo build --release --locked -p fiberflow-cli
ff=target/release/fiberflow
"$ff" generate --out "$out/data" --samples 24
"$ff" train vae --stage 1 --dataset "$out/data" --out "$out/vae-stage1" --epochs 5 --resume
"$ff" train vae --stage 2 --dataset "$out/data" --stage1 "$out/vae-stage1" \
    --out "$out/vae-stage2" --epochs 5 --resume
echo "quickstart done: $out"
