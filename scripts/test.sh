#!/usr/bin/env bash
# The test command: the whole suite with every backend that runs without a GPU —
# ndarray, wgpu (on Mesa's lavapipe when there is no GPU) and libtorch's CPU device.
# Needs the Vulkan loader and a Vulkan driver (Debian: mesa-vulkan-drivers); sets up
# libtorch 2.9.0 in .venv through pip on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh --env)"
# Mesa warns on every start without it.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --features wgpu,tch "$@"
