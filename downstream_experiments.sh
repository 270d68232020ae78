#!/usr/bin/env bash
# Score embeddings over seeds and tabulate them: `hearscan probe` then `hearscan results`.
#   ./downstream_experiments.sh EMB_DIR OUT [--seeds 0-9] [--protocol linear|heareval|heareval-fork]
# EMB_DIR: what ./extract_features.sh wrote (E/, E/<module>/ or one task folder).  Predictions go to
# OUT/predictions/, tables and plots to OUT/results/.  Resumable: run it again after an interruption.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: $0 EMB_DIR OUT [hearscan probe options]" >&2
  exit 2
fi
emb="$1"; out="$2"; shift 2
hearscan=hearscan
[ -x "$here/.venv/bin/hearscan" ] && hearscan="$here/.venv/bin/hearscan"
"$hearscan" probe "$emb" --out "$out/predictions" "$@"
"$hearscan" results "$out/predictions" --out "$out/results"
