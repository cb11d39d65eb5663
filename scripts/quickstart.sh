#!/usr/bin/env bash
# fiberflow's main job on its built-in defaults, on a CPU: build, then `fiberflow quickstart`
# (generate a small dataset, train the VAE and the diffusion model, evaluate, predict,
# write report.html). Safe to re-run: every step resumes where it stopped.
# Usage: scripts/quickstart.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/quickstart}

cargo build --release --locked -p fiberflow-cli
target/release/fiberflow quickstart --out "$out"
