#!/usr/bin/env bash
# Refresh the in-repo copy of the shared parity fixtures: scripts/refresh-fixtures.sh [SHARED_DIR]
# (fixtures/PROVENANCE.md and fixtures/trl_configs/, which are this repository's own, are kept).
set -euo pipefail
src=${1:-"$(dirname "$0")/../../shared/fixtures"}
dst="$(dirname "$0")/../fixtures"
[ -f "$src/manifest.json" ] || { echo "no fixtures at $src" >&2; exit 1; }
keep=$(mktemp -d); cp -r "$dst/PROVENANCE.md" "$dst/trl_configs" "$keep/"
rm -rf "$dst"; cp -r "$src" "$dst"; chmod -R u+w "$dst"; cp -r "$keep/PROVENANCE.md" "$keep/trl_configs" "$dst/"
rm -rf "$keep"
echo "copied $(find "$dst" -name '*.json' -not -path '*/trl_configs/*' | wc -l) files from $src"
