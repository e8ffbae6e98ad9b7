# Sourced by quickstart.sh and test.sh: create or reuse .venv and install what is missing.
# Torch goes in first and pinned (TORCH_SPEC), so pip never swaps in a multi-GB CUDA build by accident.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
stamp=".venv/.hftrain-installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    python -m pip install -q -e ".[dev,demo]"
    touch "$stamp"
fi
