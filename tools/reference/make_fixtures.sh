#!/usr/bin/env bash
# Builds tools/reference/.venv (once) and runs make_fixtures.py with the given arguments.
#   tools/reference/make_fixtures.sh [--out DIR] [--variant committed|alt] [--seed N]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.requirements.txt"

# (Re)install only when the venv is missing or requirements.txt changed since the last install.
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
if ! cmp -s "$here/requirements.txt" "$stamp"; then
    "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi

exec "$venv/bin/python" "$here/make_fixtures.py" "$@"
