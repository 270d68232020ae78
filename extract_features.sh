#!/usr/bin/env bash
# Extract embeddings over HEAR task directories in heareval's on-disk format.
#   ./extract_features.sh TASKS_DIR OUT [MODULE[=CHECKPOINT] ...] [--option [MODULE:]KEY=VALUE] [--skip-bad]
# Same engine as `hearscan extract`; see `hearscan extract --help`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: $0 TASKS_DIR OUT [MODULE[=CHECKPOINT] ...] [hearscan extract options]" >&2
  exit 2
fi
if [ -x "$here/.venv/bin/hearscan" ]; then
  exec "$here/.venv/bin/hearscan" extract "$@"
fi
exec hearscan extract "$@"
