#!/usr/bin/env bash
# Install (into .venv) and run the test suite. Extra arguments go to pytest, e.g. `-m slow` or `-k mrpc`.
source "$(dirname "$0")/env.sh"
python -m pytest "$@"
