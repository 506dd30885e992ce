#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs the whole suite on
# every backend that needs no GPU (ndarray, flex, wgpu through lavapipe, libtorch on the CPU).
#
#  - On Debian or Ubuntu, the system packages below, with apt-get, when it runs as root or
#    sudo works without a password; elsewhere it names what is missing and goes on.
#  - The Python environment of scripts/setup-venv.sh (libtorch, tokenizers, transformers,
#    sacrebleu) in .venv, once (about 7 GB: PyPI's torch is the CUDA build).
#
#   scripts/test.sh                  # the suite
#   scripts/test.sh --test product   # arguments go to cargo test
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A C/C++ toolchain (torch-sys compiles its C++ wrapper), Python venvs for pip's torch, Vulkan
# on the CPU through Mesa's lavapipe for wgpu, tcmalloc for the `tcmalloc` feature,
# Chromium for the report's browser test, and Open MPI (with libclang, which its Rust
# bindings are generated with) for the `distributed` feature and its mpirun tests.
packages=(build-essential pkg-config python3-venv mesa-vulkan-drivers libvulkan1
          libtcmalloc-minimal4 chromium openmpi-bin libopenmpi-dev libclang-dev)
if command -v dpkg >/dev/null 2>&1; then
    missing=()
    for p in "${packages[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
        if "${sudo[@]}" true 2>/dev/null; then
            echo "installing ${missing[*]}" >&2
            export DEBIAN_FRONTEND=noninteractive
            "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
        else
            echo "missing packages (install them, then run again): ${missing[*]}" >&2
            exit 1
        fi
    fi
fi

scripts/setup-venv.sh
eval "$(scripts/setup-venv.sh --env)"
exec cargo test --features wgpu,tch,flex,distributed,tcmalloc "$@"
