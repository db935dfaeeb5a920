#!/usr/bin/env bash
# The real-model quality table (issue 3): SmolLM2-135M made into a DSA model by our own distillation,
# greedy plan search, training-aware distillation, and the evaluation of every plan.
#
#   tools/real_model/quality.sh [STAGE ...]      stages: dsa search aware eval   (default: all, in order)
#
# Environment (defaults are the table's settings; the CPU smoke test in tests/ shrinks them):
#   IC=build/indexcache  MODEL=models/smollm2-135m  TOKENS=data/tokens  WORK=runs/quality  DEVICE=auto
#   CONTEXT=2048          tokens per window (distillation, search, evaluation)
#   INDEX_HEADS=4 INDEX_HEAD_DIM=64 INDEX_TOPK=256
#   STEPS=300 BATCH=1 LR=1e-3          DeepSeek-style dense warm-up of every layer's indexer (all Full)
#   AWARE_STEPS=60 AWARE_LR=5e-4       training-aware distillation of the 1/4 uniform plan, from the warm-up
#   SEARCH_TOKENS=8192                 calibration tokens for the greedy search (4 windows)
#   EVAL_TOKENS=65536                  evaluation tokens (32 windows; 0 = the whole evaluation set)
# These defaults produced docs/results/real_model.md on one H200 (about 20 minutes in all).
#   RESUME=0                           1: dsa / aware continue their checkpoint (a run split over calls)
# Outputs in $WORK: dsa/ (Llama-DSA checkpoint, all Full), aware-1_4/ (1/4 uniform, training-aware),
# plan-{1_2,1_4,1_8}.txt (searched), *.log, eval.tsv (plan, loss, perplexity per row).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
IC=${IC:-build/indexcache}
MODEL=${MODEL:-models/smollm2-135m}
TOKENS=${TOKENS:-data/tokens}
WORK=${WORK:-runs/quality}
DEVICE=${DEVICE:-auto}
CONTEXT=${CONTEXT:-2048}
INDEX=(--index-heads "${INDEX_HEADS:-4}" --index-head-dim "${INDEX_HEAD_DIM:-64}" --index-topk "${INDEX_TOPK:-256}")
STEPS=${STEPS:-300}
BATCH=${BATCH:-1}
LR=${LR:-1e-3}
AWARE_STEPS=${AWARE_STEPS:-60}
AWARE_LR=${AWARE_LR:-5e-4}
SEARCH_TOKENS=${SEARCH_TOKENS:-8192}
EVAL_TOKENS=${EVAL_TOKENS:-65536}
mkdir -p "$WORK"
stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(dsa search aware eval)
log() { echo "[quality $(date -u +%H:%M:%S)] $*" >&2; }

for stage in "${stages[@]}"; do
  case "$stage" in
    dsa)
      log "dense warm-up distillation of all $((STEPS)) steps -> $WORK/dsa"
      resume=()
      if [[ ${RESUME:-0} == 1 && -f $WORK/dsa/distill-checkpoint.safetensors ]]; then resume=(--resume); else
        rm -f "$WORK/dsa/distill-checkpoint.safetensors"; fi
      "$IC" distill "${resume[@]}" --model "$MODEL" --token-file "$TOKENS/calib.tokens" --eval-token-file "$TOKENS/eval.tokens" \
        --out "$WORK/dsa" --plan dsa "${INDEX[@]}" --context "$CONTEXT" --steps "$STEPS" --batch "$BATCH" --checkpoint-every 20 \
        --lr "$LR" --device "$DEVICE" | tee -a "$WORK/distill-dsa.log"
      ;;
    search)
      log "greedy search to keep 1/8 (1/2 and 1/4 are its intermediate steps)"
      "$IC" search --model "$WORK/dsa" --keep 1/8 --token-file "$TOKENS/calib.tokens" --context "$CONTEXT" \
        --max-tokens "$SEARCH_TOKENS" --device "$DEVICE" --out "$WORK/plan-1_8.txt" | tee "$WORK/search.log"
      layers=$(grep -o '"num_hidden_layers": *[0-9]*' "$MODEL/config.json" | grep -o '[0-9]*$')
      for r in 2 4; do
        full=$(( (layers + r - 1) / r ))
        pattern=$(awk -v f="$full" '$3 == "flip" { p = $8; n = gsub(/F/, "F", p); if (n == f) print $8 }' \
                  "$WORK/search.log" | head -n1)
        [[ -n "$pattern" ]] || { echo "quality.sh: no step with $full Full layers in search.log" >&2; exit 1; }
        echo "$pattern" > "$WORK/plan-1_$r.txt"
      done
      ;;
    aware)
      layers=$(grep -o '"num_hidden_layers": *[0-9]*' "$MODEL/config.json" | grep -o '[0-9]*$')
      log "training-aware distillation of the 1/4 uniform plan from the warm-up -> $WORK/aware-1_4"
      resume=()
      if [[ ${RESUME:-0} == 1 && -f $WORK/aware-1_4/distill-checkpoint.safetensors ]]; then resume=(--resume); else
        rm -f "$WORK/aware-1_4/distill-checkpoint.safetensors"; fi
      "$IC" distill "${resume[@]}" --model "$MODEL" --token-file "$TOKENS/calib.tokens" --eval-token-file "$TOKENS/eval.tokens" \
        --out "$WORK/aware-1_4" --plan 1/4 --init "$WORK/dsa/indexer.safetensors" "${INDEX[@]}" \
        --context "$CONTEXT" --steps "$AWARE_STEPS" --batch "$BATCH" --lr "$AWARE_LR" --warmup 5 --checkpoint-every 20 \
        --device "$DEVICE" | tee -a "$WORK/distill-aware.log"
      ;;
    eval)
      common=(--token-file "$TOKENS/eval.tokens" --context "$CONTEXT" --max-tokens "$EVAL_TOKENS" --device "$DEVICE")
      log "evaluation: dense, DSA, uniform and searched plans"
      "$IC" eval --model "$MODEL" --plans checkpoint "${common[@]}" | tee "$WORK/eval-dense.log"
      "$IC" eval --model "$WORK/dsa" "${common[@]}" \
        --plans "dsa,1/2,1/4,1/8,file:$WORK/plan-1_2.txt,file:$WORK/plan-1_4.txt,file:$WORK/plan-1_8.txt" \
        | tee "$WORK/eval-dsa.log"
      "$IC" eval --model "$WORK/aware-1_4" --plans checkpoint "${common[@]}" | tee "$WORK/eval-aware.log"
      ;;
    *) echo "quality.sh: unknown stage '$stage' (dsa search aware eval)" >&2; exit 2 ;;
  esac
done
