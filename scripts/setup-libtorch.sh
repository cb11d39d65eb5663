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
# Usage: scripts/setup-libtorch.sh [--cpu] [--test]
#   --cpu    a CPU-only venv of about 0.6 GB instead (default .libtorch/venv-cpu): the torch
#            wheel without its dependencies, plus the two small NVIDIA runtime packages
#            that torch's CPU library itself loads (the CUDA runtime and CUPTI); torch's
#            CUDA libraries are removed from it, so the build links the CPU library alone
#            and `libtorch-cuda:N` reports that torch sees no GPU. Python cannot import
#            torch from this venv (its Python module links the CUDA libraries), so the
#            build finds the headers and libraries by path. CI uses it: runners' free disk
#            varies, and the full venv once did not fit.
#   --test   instead of the release build, build the model crate's unit tests and
#            tests/backends.rs with the feature and run those that concern the backend
#            (what CI runs), in ./target. It shares almost nothing with `cargo test`'s
#            build: torch-sys's build dependencies add a feature to syn, on which nearly
#            every crate depends through its derive macros, so the whole tree is compiled
#            again; at opt-level 0 for dependencies instead of the dev profile's 3, which
#            compiles fastest (these tests are small), and so reuses the build scripts and
#            proc macros of CI's lint pass, compiled at the same level.
# Environment: FIBERFLOW_TORCH_VENV (default .libtorch/venv, or .libtorch/venv-cpu with
# --cpu), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version=2.9.0
# The NVIDIA runtime packages torch 2.9.0 pins, of which its CPU library needs these two.
cpu_only_deps=(nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-cupti-cu12==12.8.90)
cpu=false
test=false
for arg in "$@"; do
    case $arg in
    --cpu) cpu=true ;;
    --test) test=true ;;
    *)
        echo "usage: scripts/setup-libtorch.sh [--cpu] [--test]" >&2
        exit 2
        ;;
    esac
done
default_venv=.libtorch/venv
[ "$cpu" = false ] || default_venv=.libtorch/venv-cpu
venv=${FIBERFLOW_TORCH_VENV:-$default_venv}
python=${PYTHON:-python3}
target=target/libtorch

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi
venv=$(cd "$venv" && pwd)
# A --cpu venv is marked, so that neither kind of build picks up the other's venv: a full
# build cannot import torch from a CPU-only venv, and --cpu would strip a full one.
cpu_marker=$venv/fiberflow-cpu-only
if [ "$cpu" = true ] && [ ! -e "$cpu_marker" ] && [ -d "$venv/lib" ] &&
    find "$venv/lib" -maxdepth 3 -name torch -type d | grep -q .; then
    echo "error: $venv holds a full torch; --cpu would remove its CUDA libraries (choose another FIBERFLOW_TORCH_VENV)" >&2
    exit 1
fi
if [ "$cpu" = false ] && [ -e "$cpu_marker" ]; then
    echo "error: $venv is a CPU-only venv made with --cpu; run with --cpu, or choose another FIBERFLOW_TORCH_VENV" >&2
    exit 1
fi
# The installed version, read from the package metadata (importing torch needs the CUDA
# libraries, which a --cpu venv lacks). The version is the last line printed.
# (Output captured, not sent to /dev/null: on some CI runners that is a regular file, and
# what lands there breaks cargo's next rustc probe.)
if ! found=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('torch').split('+')[0])" 2>&1) ||
    [ "$(printf '%s\n' "$found" | tail -n 1)" != "$torch_version" ]; then
    echo "installing torch==$torch_version into $venv (a few minutes)"
    pip=("$venv/bin/pip" install --disable-pip-version-check --no-cache-dir --quiet)
    if [ "$cpu" = true ]; then
        "${pip[@]}" --no-deps "torch==$torch_version" "${cpu_only_deps[@]}"
        : >"$cpu_marker"
    else
        "${pip[@]}" "torch==$torch_version"
    fi
fi

export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
if [ "$cpu" = true ]; then
    torch_dir=$("$venv/bin/python" -c "import importlib.util as u; print(u.find_spec('torch').submodule_search_locations[0])")
    # torch-sys links torch's CUDA library whenever the file exists; without it the build
    # is CPU-only and needs none of the NVIDIA libraries beyond the two installed above.
    # (torch-sys also names libtorch.so, a stub whose own list still names the CUDA
    # library; rustc links with --as-needed, so the stub, which the code never calls, is
    # left out. Torch-sys cannot check the version of a folder without `build-version`,
    # so the version check above is the only one.)
    rm -f "$torch_dir"/lib/libtorch_cuda*.so "$torch_dir"/lib/libc10_cuda.so \
        "$torch_dir"/lib/libtorch_nvshmem.so "$torch_dir"/lib/libcaffe2_nvrtc.so
    export LIBTORCH="$torch_dir"
    unset LIBTORCH_USE_PYTORCH
else
    # torch-sys asks `python` (found through VIRTUAL_ENV/PATH) where torch's headers and
    # libraries are.
    export LIBTORCH_USE_PYTORCH=1
    unset LIBTORCH
fi
if [ "$test" = true ]; then
    cargo test --locked -p fiberflow-model --features libtorch --lib --test backends \
        --config 'profile.dev.package."*".opt-level = 0' -- libtorch device::
    exit
fi
cargo build --release --locked -p fiberflow-cli --features libtorch --target-dir "$target"

echo
echo "built $target/release/fiberflow with the LibTorch backend, e.g.:"
echo "  $target/release/fiberflow bench vae --device cpu,libtorch"
echo "  $target/release/fiberflow train vae --stage 1 --device libtorch ...   # CPU"
echo "  $target/release/fiberflow train vae --stage 1 --device libtorch-cuda:0 ...   # GPU"
