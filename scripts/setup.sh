#!/usr/bin/env bash
# Installs torch 2.13.0 (CPU; pinned here only, where it saves a download: the package itself
# accepts any torch>=2.4), the test and train dependencies, and builds manual_ops in place
# (editable) against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q "torch==2.13.0" setuptools wheel
"$PYTHON" -m pip install -q -r requirements-dev.txt
"$PYTHON" -m pip install -q --no-build-isolation -e ".[train,test]"
