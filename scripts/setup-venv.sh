#!/usr/bin/env bash
# The Python virtual environment kiln's builds and tests use:
#  - libtorch 2.9.0 (the version tch 0.22 / burn-tch 0.21 are built for) as the pip package
#    torch==2.9.0, so nothing is downloaded at build time;
#  - Hugging Face `tokenizers`, which the BPE interop test (tests/hf_tokenizers.py) checks
#    kiln's tokenizer.json files against;
#  - Hugging Face `transformers`, which the GPT-2 interop tests (tests/hf_gpt2.py) load
#    `kiln export` folders with and save random GPT-2s with for `kiln import`;
#  - `sacrebleu`, which the BLEU test (tests/sacrebleu_check.py) checks kiln's scores against;
#  - OpenAI's `openai` client, which the server test (tests/openai_client.py) talks to
#    `kiln serve` with.
#
#   scripts/setup-venv.sh            # creates .venv next to Cargo.toml
#   eval "$(scripts/setup-venv.sh --env)"   # … and exports what cargo needs
#   cargo build --release --features tch  # or cuda
#
# The wheel from PyPI is the CUDA 12.8 build; it runs on CPU-only machines too.
# The built kiln finds libtorch through an rpath (build.rs): no LD_LIBRARY_PATH needed.
set -euo pipefail
# The wheels are installed once; keeping pip's copy of them too would add ~3 GB to the 7 GB.
export PIP_NO_CACHE_DIR=1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_VENV:-$root/.venv}"
torch_version="${KILN_TORCH_VERSION:-2.9.0}"
tokenizers_version="0.23.3"
transformers_version="5.23.0"
sacrebleu_version="2.6.0"
openai_version="3.63.0"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "torch==$torch_version" >&2
fi
if ! "$venv/bin/python" -c "import tokenizers, sys; sys.exit(tokenizers.__version__ != '$tokenizers_version')" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "tokenizers==$tokenizers_version" >&2
fi
if ! "$venv/bin/python" -c "import transformers, sys; sys.exit(transformers.__version__ != '$transformers_version')" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "transformers==$transformers_version" >&2
fi

if ! "$venv/bin/python" -c "import sacrebleu, sys; sys.exit(sacrebleu.__version__ != '$sacrebleu_version')" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "sacrebleu==$sacrebleu_version" >&2
fi
if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$openai_version')" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "openai==$openai_version" >&2
fi

exports="export VIRTUAL_ENV=\"$venv\" PATH=\"$venv/bin:\$PATH\" LIBTORCH_USE_PYTORCH=1"
if [ "${1:-}" = "--env" ]; then
    echo "$exports"
else
    echo "libtorch $torch_version, tokenizers $tokenizers_version, transformers $transformers_version, sacrebleu $sacrebleu_version, openai $openai_version ready in $venv. Before building with --features tch or cuda, run:" >&2
    echo "  $exports" >&2
fi
