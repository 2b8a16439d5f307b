#!/usr/bin/env bash
# Refresh the in-repo copy of the shared parity fixtures: scripts/refresh-fixtures.sh [SHARED_DIR]
# This repository's own folders are kept: fixtures/PROVENANCE.md, fixtures/trl_configs/
# (scripts/dump_trl_configs.py), fixtures/grpo_matrix/ and fixtures/online_dpo/
# (scripts/gen_online_fixtures.py) and fixtures/hf/ (scripts/make_hf_fixtures.py).
# manifest.json comes from the shared copy: rerun scripts/gen_online_fixtures.py afterwards to
# add its groups back.
set -euo pipefail
src=${1:-"$(dirname "$0")/../../shared/fixtures"}
dst="$(dirname "$0")/../fixtures"
[ -f "$src/manifest.json" ] || { echo "no fixtures at $src" >&2; exit 1; }
own=(PROVENANCE.md trl_configs grpo_matrix online_dpo hf data distill)
keep=$(mktemp -d)
for item in "${own[@]}"; do [ -e "$dst/$item" ] && cp -r "$dst/$item" "$keep/"; done
rm -rf "$dst"; cp -r "$src" "$dst"; chmod -R u+w "$dst"
for item in "${own[@]}"; do [ -e "$keep/$item" ] && cp -r "$keep/$item" "$dst/"; done
rm -rf "$keep"
echo "copied $(find "$src" -name '*.json' | wc -l) files from $src (kept: ${own[*]})"
echo "now rerun scripts/gen_online_fixtures.py to restore its manifest groups"
