#!/usr/bin/env bash
# Set up anydit in ./.venv on a fresh machine (CPU). Pass "test" to add the test tools.
# torch is installed first and pinned by constraints.txt, so pip never swaps in another build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0 numpy
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
