#!/usr/bin/env bash
# The README's first command: from a fresh clone, install what the build needs (tools/setup.sh), build
# (tools/build.sh: only the CLI target — with the CUDA backend when nvcc is present — unless
# IC_DEMO_FULL_BUILD=1), then run `indexcache demo` with any arguments given here.
#
# With no arguments: the real model when it has been fetched (tools/real_model/prepare.sh made
# models/smollm2-135m and data/tokens): SmolLM2-135M with our distilled indexers (assembled once into
# models/smollm2-135m-dsa from tools/real_model/indexers/), a prompt of real text, DSA against the
# searched 1/4 plan. Otherwise (or with IC_DEMO_SYNTHETIC=1) the embedded synthetic model, offline.
#
#   bash tools/demo.sh                    # the real model if fetched, else the synthetic one; DSA vs 1/4
#   bash tools/demo.sh --plan 1/2 --prompt-tokens 4096      # the synthetic model with these options
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/setup.sh
if [[ ${IC_DEMO_FULL_BUILD:-0} == 1 ]]; then
  bash tools/build.sh
else
  bash tools/build.sh indexcache_cli
fi
ic="${IC_BUILD_DIR:-build}/indexcache"
if [[ $# -eq 0 && ${IC_DEMO_SYNTHETIC:-0} != 1 && -f models/smollm2-135m/model.safetensors && -f data/tokens/eval.tokens ]]; then
  if [[ ! -f models/smollm2-135m-dsa/indexer.safetensors ]]; then
    "$ic" distill --model models/smollm2-135m --token-file data/tokens/calib.tokens --out models/smollm2-135m-dsa \
      --steps 0 --init tools/real_model/indexers/smollm2-135m-dsa.safetensors --device cpu >/dev/null
  fi
  echo "[demo] the real model (SmolLM2-135M + distilled indexers); IC_DEMO_SYNTHETIC=1 for the synthetic one"
  exec "$ic" demo --model models/smollm2-135m-dsa --token-file data/tokens/eval.tokens \
    --plan file:tools/real_model/plans/searched-1_4.txt --prompt-tokens 2048 --decode-tokens 16
fi
if [[ $# -eq 0 ]]; then
  if [[ -f models/smollm2-135m/model.safetensors ]]; then
    echo "[demo] the embedded synthetic model (IC_DEMO_SYNTHETIC=1)"
  else
    echo "[demo] the embedded synthetic model (fetch the real one with: bash tools/real_model/prepare.sh)"
  fi
fi
exec "$ic" demo "$@"
