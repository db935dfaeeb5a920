#!/usr/bin/env bash
# THERE (the H200, through the device tool's `run`): the real-model jobs (tools/real_model/quality.sh)
# on a GPU host without network. Files live in /tmp/ic_real, which survives between calls while the
# machine stays warm; each call fits in the 10-minute limit. See pack_real_model.sh for the carries.
#
#   real_model.sh stage DIR [next command...]   copy a carried folder into /tmp/ic_real (untar the bundle)
#   real_model.sh prepare                        join the GGUF (sha256-checked), install the wheels,
#                                                convert to /tmp/ic_real/models/smollm2-135m (F32)
#   STAGES="dsa search" real_model.sh quality    run quality.sh stages on the GPU; logs and the small
#                                                outputs (indexer weights, plans) to $OUT
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
R=/tmp/ic_real
OUT=${OUT:-/tmp/real_out}
mkdir -p "$R" "$OUT"
export LD_LIBRARY_PATH="$R/bundle/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
while [[ $# -gt 0 ]]; do
  cmd=$1
  shift
  case "$cmd" in
    stage)
      src=$1
      shift
      cp -r "$src"/. "$R/"
      if [[ -f $R/bundle.tar.gz ]]; then tar -C "$R" -xzf "$R/bundle.tar.gz" && rm "$R/bundle.tar.gz"; fi
      ls -la "$R"
      ;;
    prepare)
      cat $(ls "$R"/gguf.part* | sort -V) > "$R/model.gguf"
      [[ "$(sha256sum "$R/model.gguf" | cut -d' ' -f1)" == "$(cat "$R/gguf.sha256")" ]] || {
        echo "real_model.sh: the joined GGUF has the wrong sha256" >&2; exit 1; }
      rm -f "$R"/gguf.part*
      python3 -c "import numpy" 2>/dev/null || { echo "real_model.sh: python3 lacks numpy" >&2; exit 1; }
      python3 -m pip install -q --no-index --no-deps --target "$R/py" "$R"/wheels/*.whl
      PYTHONPATH="$R/py" python3 tools/real_model/convert_gguf.py "$R/model.gguf" "$R/models/smollm2-135m" \
        --no-tokenizer --expect-sha256 "$(cat "$R/gguf.sha256")"
      mkdir -p "$R/tokens"
      mv "$R"/calib.tokens* "$R"/eval.tokens* "$R/tokens/" 2>/dev/null || true
      ls -la "$R/models/smollm2-135m" "$R/tokens"
      ;;
    quality)
      {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
        nproc
      } | tee "$OUT/machine.txt"
      IC="$R/bundle/bin/indexcache" MODEL="$R/models/smollm2-135m" TOKENS="$R/tokens" WORK="$R/work" \
        DEVICE=${DEVICE:-cuda} bash tools/real_model/quality.sh ${STAGES:-dsa search aware eval} 2>&1 | \
        grep -v '%.*left$' | tee "$OUT/quality-$(date -u +%H%M%S).log"
      rc=${PIPESTATUS[0]}
      for f in "$R"/work/*.log "$R"/work/plan-*.txt "$R"/work/dsa/indexer.safetensors "$R"/work/dsa/config.json; do
        [[ -f $f ]] && cp "$f" "$OUT/$(basename "$(dirname "$f")")-$(basename "$f")"
      done
      [[ -f $R/work/aware-1_4/indexer.safetensors ]] && cp "$R/work/aware-1_4/indexer.safetensors" "$OUT/aware-1_4-indexer.safetensors"
      exit "$rc"
      ;;
    *) echo "real_model.sh: unknown command '$cmd'" >&2; exit 2 ;;
  esac
done
