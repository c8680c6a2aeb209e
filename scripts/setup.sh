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
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
  # the web page's browser test drives Debian's Chromium (Playwright cannot download one here)
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } \
      >/dev/null 2>&1 || echo "setup: chromium could not be installed; the browser test will be skipped"
  else
    echo "setup: no chromium and no apt as root; the browser test will be skipped"
  fi
fi
