#!/usr/bin/env bash
# Refresh the in-repo copy of the shared parity fixtures: scripts/refresh-fixtures.sh [SHARED_DIR]
set -euo pipefail
src=${1:-"$(dirname "$0")/../../shared/fixtures"}
dst="$(dirname "$0")/../fixtures"
[ -f "$src/manifest.json" ] || { echo "no fixtures at $src" >&2; exit 1; }
keep="$dst/PROVENANCE.md"; tmp=$(mktemp); cp "$keep" "$tmp"
rm -rf "$dst"; cp -r "$src" "$dst"; chmod -R u+w "$dst"; cp "$tmp" "$keep"
echo "copied $(find "$dst" -name '*.json' | wc -l) files from $src"
