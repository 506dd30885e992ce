#!/usr/bin/env bash
# Installs libtorch 2.9.0 (the version tch 0.22 / burn-tch 0.21 are built for) as the pip
# package torch==2.9.0 in a virtual environment, so nothing is downloaded at build time.
#
#   scripts/setup-libtorch.sh            # creates .venv next to Cargo.toml
#   eval "$(scripts/setup-libtorch.sh --env)"   # … and exports what cargo needs
#   cargo build --release --features tch  # or cuda
#
# The wheel from PyPI is the CUDA 12.8 build; it runs on CPU-only machines too.
# The built kiln finds libtorch through an rpath (build.rs): no LD_LIBRARY_PATH needed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_VENV:-$root/.venv}"
torch_version="${KILN_TORCH_VERSION:-2.9.0}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "torch==$torch_version" >&2
fi

exports="export VIRTUAL_ENV=\"$venv\" PATH=\"$venv/bin:\$PATH\" LIBTORCH_USE_PYTORCH=1"
if [ "${1:-}" = "--env" ]; then
    echo "$exports"
else
    echo "libtorch $torch_version ready in $venv. Before building with --features tch or cuda, run:" >&2
    echo "  $exports" >&2
fi
