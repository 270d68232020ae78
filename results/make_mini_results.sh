#!/usr/bin/env bash
# Regenerate results/mini/: the mini suite scored with the weights-free baseline (logmel) and each backbone at
# random initialisation (smallest size, compiled scan kernels, CPU), by
#   1. hearscan tasks build  (mini suite, once)
#   2. hearscan extract      (one module at a time)
#   3. hearscan probe --protocol linear   --seeds 0-9          (hearscan's batched linear probe)
#   4. hearscan probe --protocol heareval --seeds $HEAREVAL_SEEDS  (heareval's runner, stock 8-point grid)
#   5. hearscan results      (tables, per-seed CSV, plots)   -> results/mini/
#
#   ./results/make_mini_results.sh [MODULE ...]        (default: every registered module, `hearscan modules --names`)
#
# Environment:
#   WORK=/work/results-work   big intermediate data (tasks, embeddings, predictions); never committed
#   HEAREVAL_SEEDS=0          seeds for the heareval protocol (it is ~100x slower than the linear probe)
#   HEAREVAL_MODULES=...      modules that get the heareval protocol (default: all given)
#   LINEAR_SEEDS=0-9
#   THREADS=2                 torch CPU threads for the probe
#   HEAREVAL_GRID_POINTS=     empty: heareval's full stock grid (8 points) -> results/mini; N: only the first N
#                             stock grid points (NOT the stock protocol), kept apart in
#                             $WORK/predictions-heareval-gridN and results/mini-heareval-gridpointN
#   HEAREVAL_TASKS=all        tasks (comma-separated names) that get the heareval protocol
#   BACKBONE_TASKS=mini_drums  tasks (comma-separated names) extracted for the backbones; "all" = whole suite.
#                             logmel always gets the whole suite.  The backbones pad every clip to their
#                             native 2-10 s input, so on 2 CPU cores the whole suite takes ~1-2 h per backbone.
# Every step resumes: a second run only does what is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
hs="$here/.venv/bin/hearscan"
[ -x "$hs" ] || hs=hearscan
WORK="${WORK:-/work/results-work}"
LINEAR_SEEDS="${LINEAR_SEEDS:-0-9}"
HEAREVAL_SEEDS="${HEAREVAL_SEEDS:-0}"
THREADS="${THREADS:-2}"
BACKBONE_TASKS="${BACKBONE_TASKS:-mini_drums}"
HEAREVAL_GRID_POINTS="${HEAREVAL_GRID_POINTS:-}"
HEAREVAL_TASKS="${HEAREVAL_TASKS:-all}"
hv_out="$WORK/predictions"
hv_args=()
if [ -n "$HEAREVAL_GRID_POINTS" ]; then
  hv_out="$WORK/predictions-heareval-grid$HEAREVAL_GRID_POINTS"
  hv_args=(--grid-points "$HEAREVAL_GRID_POINTS")
fi
modules=("$@")
[ ${#modules[@]} -gt 0 ] || mapfile -t modules < <("$hs" modules --names)
read -r -a heareval_modules <<< "${HEAREVAL_MODULES:-${modules[*]}}"

# load_model options per module: its smallest model, from the registry (`hearscan modules --smallest M`); they
# name the embedding folder (heareval's tag), so only the options that change the model go there.  No GPU is
# used (none here; device defaults to CPU without CUDA) and the compiled scan kernels are forced for every
# module through HEARSCAN_SCAN_BACKEND (an error, not a silent fallback to the PyTorch reference, if a kernel
# cannot be built).
opts() { "$hs" modules --smallest "$1"; }
export HEARSCAN_SCAN_BACKEND=compiled

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
t_all=$SECONDS

log "1/5 mini suite -> $WORK/tasks"
"$hs" tasks build "$WORK/tasks" --suite mini

for m in "${modules[@]}"; do
  if [ "$m" = logmel ] || [ "$BACKBONE_TASKS" = all ]; then
    sources=("$WORK/tasks")
  else
    sources=()
    IFS=, read -r -a names <<< "$BACKBONE_TASKS"
    for n in "${names[@]}"; do sources+=("$WORK/tasks/$n"-v1-full); done
  fi
  for src in "${sources[@]}"; do
    log "2/5 extract $m $(opts "$m") from $src"
    t=$SECONDS
    # shellcheck disable=SC2046
    "$hs" extract "$src" "$WORK/embeddings" "$m" $(opts "$m") --no-progress
    log "    extract $m: $((SECONDS - t)) s"
  done
done

tags=()
for m in "${modules[@]}"; do
  for d in "$WORK"/embeddings/hear_modules."$m" "$WORK"/embeddings/hear_modules."$m"-*; do
    [ -d "$d" ] && tags+=("$d")
  done
done

log "3/5 linear probe, seeds $LINEAR_SEEDS"
t=$SECONDS
"$hs" probe "${tags[@]}" --protocol linear --seeds "$LINEAR_SEEDS" --threads "$THREADS" --out "$WORK/predictions"
log "    linear probe: $((SECONDS - t)) s"

for m in "${heareval_modules[@]}"; do
  for d in "$WORK"/embeddings/hear_modules."$m" "$WORK"/embeddings/hear_modules."$m"-*; do
    [ -d "$d" ] || continue
    if [ "$HEAREVAL_TASKS" = all ]; then
      targets=("$d")
    else
      targets=()
      IFS=, read -r -a names <<< "$HEAREVAL_TASKS"
      for n in "${names[@]}"; do [ -d "$d/$n-v1-full" ] && targets+=("$d/$n-v1-full"); done
    fi
    [ ${#targets[@]} -gt 0 ] || continue
    log "4/5 heareval grid (${HEAREVAL_GRID_POINTS:-8 stock} points), seeds $HEAREVAL_SEEDS: ${targets[*]}"
    t=$SECONDS
    "$hs" probe "${targets[@]}" --protocol heareval --seeds "$HEAREVAL_SEEDS" --threads "$THREADS" \
      --out "$hv_out" "${hv_args[@]}"
    log "    heareval $m: $((SECONDS - t)) s"
  done
done

log "5/5 tables and plots -> results/mini"
"$hs" results "$WORK/predictions" --out "$here/results/mini"
if [ -n "$HEAREVAL_GRID_POINTS" ] && [ -d "$hv_out" ]; then
  "$hs" results "$hv_out" --out "$here/results/mini-heareval-gridpoint$HEAREVAL_GRID_POINTS"
fi
log "done in $((SECONDS - t_all)) s"
