#!/usr/bin/env bash
# The README's first command: from a fresh clone, install what the build needs (tools/setup.sh), build
# (tools/build.sh: only the CLI target — with the CUDA backend when nvcc is present — unless
# IC_DEMO_FULL_BUILD=1), then run `indexcache demo` with
# any arguments given here.
#
#   bash tools/demo.sh                    # the embedded synthetic model, DSA vs IndexCache 1/4
#   bash tools/demo.sh --plan 1/2 --prompt-tokens 4096
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/setup.sh
if [[ ${IC_DEMO_FULL_BUILD:-0} == 1 ]]; then
  bash tools/build.sh
else
  bash tools/build.sh indexcache_cli
fi
exec "${IC_BUILD_DIR:-build}/indexcache" demo "$@"
