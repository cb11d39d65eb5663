#!/usr/bin/env bash
# Builds fiberflow with Burn's LibTorch backend (devices `libtorch` and `libtorch-cuda:N`):
# PyTorch's CPU kernels are 3.5-4.5x faster per convolution than the default pure-Rust
# backend, and its CUDA build is the GPU route that needs nothing beyond the package
# registries (CubeCL's `cuda` feature downloads an LLVM bundle at build time).
#
#   1. a Python venv with the torch version Burn 0.22.1's bindings expect (torch-sys
#      0.22.0 checks for 2.9.0); PyPI's wheel is the CUDA build, so the same venv serves
#      CPUs and NVIDIA GPUs (about 6.5 GB with the NVIDIA libraries);
#   2. `cargo build --release --features libtorch` against that venv, into its own target
#      folder (target/libtorch), so switching between this binary and the default one
#      rebuilds neither; build.rs records torch's library folder as the binary's rpath, so
#      it runs without LD_LIBRARY_PATH.
#
# Usage: scripts/setup-libtorch.sh [--test]
#   --test   instead of the release build, build the model crate's unit tests and
#            tests/backends.rs with the feature and run those that concern the backend
#            (what CI runs). It uses ./target like `cargo test`, sharing every crate whose
#            features do not change.
# Environment: FIBERFLOW_TORCH_VENV (default .libtorch/venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version=2.9.0
venv=${FIBERFLOW_TORCH_VENV:-.libtorch/venv}
python=${PYTHON:-python3}
target=target/libtorch

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi
venv=$(cd "$venv" && pwd)
# (Output captured, not sent to /dev/null: on some CI runners that is a regular file, and
# what lands there breaks cargo's next rustc probe.)
# The version is the last line printed; a warning torch prints on import comes before it.
if ! found=$("$venv/bin/python" -c "import torch; print(torch.__version__.split('+')[0])" 2>&1) ||
    [ "$(printf '%s\n' "$found" | tail -n 1)" != "$torch_version" ]; then
    echo "installing torch==$torch_version into $venv (a few minutes)"
    "$venv/bin/pip" install --disable-pip-version-check --no-cache-dir --quiet "torch==$torch_version"
fi

# torch-sys asks `python` (found through VIRTUAL_ENV/PATH) where torch's headers and
# libraries are.
export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1
if [ "${1:-}" = "--test" ]; then
    cargo test --locked -p fiberflow-model --features libtorch --lib --test backends -- libtorch device::
    exit
fi
cargo build --release --locked -p fiberflow-cli --features libtorch --target-dir "$target"

echo
echo "built $target/release/fiberflow with the LibTorch backend, e.g.:"
echo "  $target/release/fiberflow bench vae --device cpu,libtorch"
echo "  $target/release/fiberflow train vae --stage 1 --device libtorch ...   # CPU"
echo "  $target/release/fiberflow train vae --stage 1 --device libtorch-cuda:0 ...   # GPU"
