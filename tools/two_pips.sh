#!/usr/bin/env bash
# Two fresh venvs, one with the pip that ships with this Python and one with the newest pip,
# each installed through the Makefile's command (pip install -c requirements.lock -e .[dev]);
# prints both pip versions and the diff of their `pip freeze` (empty: identical versions).
# With --test, also runs the fast suite in the newest-pip venv (the stock-pip venv is the one
# `make test` builds, so CI already runs the suite there).
# Usage: tools/two_pips.sh [--test] [WORKDIR]   (about 2 minutes without --test)
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
if [[ "${1:-}" == "--test" ]]; then TEST=1; shift; fi
WORK=${1:-$(mktemp -d)}
PYTHON=${PYTHON:-$(command -v python3.12 || command -v python3)}
for kind in stock newest; do
  venv="$WORK/$kind"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  if [[ $kind == newest ]]; then
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  fi
  # (this machine's pip config may name local index folders; their warnings are noise)
  "$venv/bin/python" -m pip install -q -c requirements.lock -e '.[dev]' 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "$kind: $("$venv/bin/python" -m pip --version | cut -d' ' -f1-2)"
  "$venv/bin/python" -m pip freeze --exclude-editable | sort > "$WORK/$kind.txt"
done
if diff "$WORK/stock.txt" "$WORK/newest.txt"; then
  echo "identical: $(wc -l < "$WORK/stock.txt") packages"
else
  echo "the two pips installed different versions (diff above)" >&2
  exit 1
fi
"$WORK/newest/bin/python" tools/check_lock.py --installed
if [[ $TEST == 1 ]]; then
  "$WORK/newest/bin/python" -m pytest -q -m "not slow and not multidevice" -p no:cacheprovider
fi
