#!/usr/bin/env bash
# Installs the benchmark's load generator: vegeta (open-loop HTTP load, written in Go), pinned, built
# from source with `go install` into .tools/go/bin. GOPATH, GOCACHE and GOMODCACHE live under .tools/go
# too, so nothing is written outside the repository. Idempotent: does nothing when the pinned version is
# already there.
#   scripts/install-bench-tools.sh            install if missing
#   scripts/install-bench-tools.sh --check    exit 1 (with a message) if it is missing
#   scripts/install-bench-tools.sh --path     print the vegeta binary's path
set -euo pipefail

VEGETA_MODULE="github.com/tsenart/vegeta/v12"
VEGETA_VERSION="v12.13.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gotools="$root/.tools/go"
bin="$gotools/bin/vegeta"
stamp="$gotools/.vegeta-installed"
want="$VEGETA_MODULE@$VEGETA_VERSION"

if [ "${1:-}" = "--path" ]; then
  echo "$bin"
  exit 0
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$bin" ]; then
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "mcp-ext-proc: vegeta $VEGETA_VERSION is not installed; run scripts/install-bench-tools.sh" >&2
  exit 1
fi

go="$(command -v go || true)"
if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go; fi
if [ -z "$go" ]; then
  echo "mcp-ext-proc: the benchmark needs Go (>= 1.22) to build its load generator, vegeta $VEGETA_VERSION." >&2
  echo "  Install Go (https://go.dev/doc/install, or Debian/Ubuntu: apt-get install golang-go), then rerun" >&2
  echo "  scripts/install-bench-tools.sh (npm run bench runs it for you)." >&2
  exit 1
fi

echo "mcp-ext-proc: building $want into .tools/go/bin (first time only, about a minute)" >&2
mkdir -p "$gotools/bin"
env GOBIN="$gotools/bin" GOPATH="$gotools/path" GOCACHE="$gotools/cache" GOMODCACHE="$gotools/path/pkg/mod" \
  GOFLAGS="-modcacherw" CGO_ENABLED=0 \
  "$go" install "$want"
"$bin" -version >/dev/null
echo "$want" > "$stamp"
echo "mcp-ext-proc: vegeta installed at $bin" >&2
