#!/usr/bin/env bash
# Installs what the IndexCache SDK build needs on Debian 12 (bookworm): compilers, CMake and the Debian
# packages of our dependencies. Idempotent: checks each package with dpkg, runs `apt-get update` only when
# something is missing and apt does not know it yet, installs only what is missing. Runs as root, or
# through sudo otherwise. Non-interactive.
#
#   bash tools/setup.sh            # install what is missing
#   IC_SETUP_DRY_RUN=1 bash tools/setup.sh   # only print what would be installed
#   IC_SETUP_EXTRA="gdb ccache" bash tools/setup.sh   # more packages, same rules
#
# The CUDA toolkit is not installed here: the build compiles the CUDA backend when nvcc exists
# (/usr/local/cuda/bin/nvcc or on PATH) and skips it cleanly otherwise.
set -euo pipefail

PACKAGES=(
  cmake make g++ pkg-config binutils
  libabsl-dev libprotobuf-dev protobuf-compiler prometheus-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev libpng-dev
  python3 python3-venv
)
# shellcheck disable=SC2206
PACKAGES+=(${IC_SETUP_EXTRA:-})

log() { echo "[setup] $*"; }

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  log "error: this script needs a Debian/Ubuntu system with dpkg and apt-get" >&2
  log "install these (or your distribution's equivalents) by hand: ${PACKAGES[*]}" >&2
  exit 1
fi
if [[ -r /etc/os-release ]]; then
  # shellcheck disable=SC1091
  . /etc/os-release
  if [[ "${ID:-}" != debian || "${VERSION_ID:-}" != 12 ]]; then
    log "warning: tested on Debian 12 (bookworm); this is ${PRETTY_NAME:-unknown}; trying anyway" >&2
  fi
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${PACKAGES[@]}"; do
  if installed "$p"; then :; else missing+=("$p"); fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  log "all ${#PACKAGES[@]} packages already installed; nothing to do"
  exit 0
fi
log "missing: ${missing[*]}"
if [[ -n "${IC_SETUP_DRY_RUN:-}" ]]; then
  log "dry run: would install ${missing[*]}"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    SUDO=(sudo -n)
    if ! sudo -n true 2>/dev/null; then SUDO=(sudo); fi
  else
    log "error: not root and sudo is not installed; run as root: bash tools/setup.sh" >&2
    exit 1
  fi
fi
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600)

# apt knows a package when it has an install candidate; a fresh image has empty lists and knows nothing.
known() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -qv '^(none)$'; }
need_update=0
for p in "${missing[@]}"; do
  if ! known "$p"; then need_update=1; break; fi
done
if [[ $need_update -eq 1 ]]; then
  log "apt-get update (package lists do not know every missing package)"
  "${APT[@]}" update
  updated=1
else
  updated=0
fi

log "apt-get install ${missing[*]}"
if ! "${APT[@]}" install --no-install-recommends "${missing[@]}"; then
  if [[ $updated -eq 1 ]]; then
    log "error: apt-get install failed" >&2
    exit 1
  fi
  log "install failed with the current package lists (stale?); apt-get update and retry"
  "${APT[@]}" update
  "${APT[@]}" install --no-install-recommends "${missing[@]}"
fi

still=()
for p in "${missing[@]}"; do
  if ! installed "$p"; then still+=("$p"); fi
done
if [[ ${#still[@]} -ne 0 ]]; then
  log "error: still missing after install: ${still[*]}" >&2
  exit 1
fi
log "installed ${#missing[@]} package(s): ${missing[*]}"
