#!/usr/bin/env bash
# HERE (no GPU): packs what the real-model jobs need on a GPU host without network into carries that each
# fit, with the working tree (~25 MB), in the device tool's 64 MiB per call:
#   .deps/device_real/a/:  bundle.tar.gz (the sm_90a CLI + its shared libraries, CLI_ONLY bundle.sh),
#                          wheels (gguf, tqdm, PyYAML: pure or cp312 manylinux), the token sets, gguf.sha256
#   .deps/device_real/p0/, p1/, …: the GGUF in 30 MiB parts (gguf.part0, gguf.part1, …)
# Needs: tools/real_model/prepare.sh done once (GGUF in .deps/real_model, token sets in data/tokens).
#
#   bash tools/device/pack_real_model.sh          # prints the parts
#   run(command="bash tools/device/real_model.sh stage .deps/device_real/a", carry=[".deps/device_real/a"])
#   run(command="bash tools/device/real_model.sh stage .deps/device_real/p0", carry=[".deps/device_real/p0"])
#   …  (one call per part, each within 30 s of the last: /tmp survives while the machine stays warm)
#   run(command="bash tools/device/real_model.sh stage .deps/device_real/pN prepare", carry=[".deps/device_real/pN"])
#   run(command="STAGES='dsa' bash tools/device/real_model.sh quality")     # each call < 10 min
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
gguf=.deps/real_model/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f $gguf ]] || { echo "pack_real_model: $gguf missing: run tools/real_model/prepare.sh" >&2; exit 1; }
[[ -f data/tokens/calib.tokens && -f data/tokens/eval.tokens ]] || {
  echo "pack_real_model: data/tokens missing: run tools/real_model/prepare.sh" >&2; exit 1; }
CLI_ONLY=1 bash tools/device/bundle.sh >&2
out=.deps/device_real
rm -rf "$out"/a "$out"/b "$out"/c "$out"/p[0-9]*
mkdir -p "$out/a/wheels"
tar -C .deps -czf "$out/a/bundle.tar.gz" bundle
sha256sum "$gguf" | cut -d' ' -f1 > "$out/a/gguf.sha256"
split -b 30M -d -a 1 "$gguf" "$out/gguf.part"
for part in "$out"/gguf.part*; do
  i=${part##*.part}
  mkdir -p "$out/p$i"
  mv "$part" "$out/p$i/"
done
w=.deps/real_model/wheels
mkdir -p "$w"
pip download -q --no-deps -d "$w" gguf==0.17.1 tqdm==4.67.1
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d "$w" \
  pyyaml==6.0.2
cp "$w"/gguf-0.17.1-*.whl "$w"/tqdm-4.67.1-*.whl "$w"/PyYAML-6.0.2-cp312-*.whl "$out/a/wheels/"
cp data/tokens/calib.tokens data/tokens/eval.tokens data/tokens/calib.tokens.json data/tokens/eval.tokens.json "$out/a/"
du -sh "$out"/a "$out"/p[0-9]*
