#!/usr/bin/env bash
# Install test: `cmake --install` into a temporary prefix, then check what a user gets.
#   1. the header, libindexcache.so, indexcache.pc and the CMake package are installed;
#   2. the library exports only ic_* symbols (bindings_c/indexcache.map) and has no RPATH into the build
#      tree; the installed CLI (if any) resolves all its libraries;
#   3. a tiny C program builds and runs against the installed library, once with pkg-config and once
#      with find_package(indexcache) + indexcache::indexcache.
#
#   bash tests/install_test.sh BUILD_DIR      # BUILD_DIR already built (ctest runs it after the build)
set -euo pipefail

if [[ $# -ne 1 || ! -f "$1/CMakeCache.txt" ]]; then
  echo "usage: $0 BUILD_DIR (a configured and built CMake build directory)" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/indexcache_install_test.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }

step "cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" > "$work/install.log" || { cat "$work/install.log"; fail "cmake --install failed"; }

header=$prefix/include/indexcache/indexcache.h
[[ -f $header ]] || fail "header not installed: $header"
lib=$(find "$prefix" -name 'libindexcache.so' \( -type f -o -type l \) | head -1)
[[ -n $lib ]] || fail "libindexcache.so not installed under $prefix"
libdir=$(dirname "$lib")
pcdir=$(dirname "$(find "$prefix" -name indexcache.pc | head -1)")
[[ -f $pcdir/indexcache.pc ]] || fail "indexcache.pc not installed"
config=$(find "$prefix" -name indexcacheConfig.cmake | head -1)
[[ -n $config ]] || fail "indexcacheConfig.cmake not installed"
for f in indexcacheConfigVersion.cmake indexcacheTargets.cmake; do
  [[ -f $(dirname "$config")/$f ]] || fail "$f not installed next to $config"
done
echo "installed: $(cd "$prefix" && find . -type f -o -type l | sort | tr '\n' ' ')"

step "exported symbols of $lib"
# Linker-generated symbols some toolchains leave global; anything else must be ic_*.
allowed='^(_init|_fini|_edata|_end|__bss_start)$'
nm -D --defined-only "$lib" | awk '{print $NF}' | sed 's/@.*//' | sort -u > "$work/symbols"
grep -q '^ic_' "$work/symbols" || fail "no ic_* symbol exported"
bad=$(grep -v '^ic_' "$work/symbols" | grep -Ev "$allowed" || true)
if [[ -n $bad ]]; then
  echo "$bad" | head -20 >&2
  fail "$(echo "$bad" | wc -l) exported symbol(s) outside ic_* (is -Wl,--version-script=bindings_c/indexcache.map set?)"
fi
echo "$(grep -c '^ic_' "$work/symbols") ic_* symbols, nothing else"

if readelf -d "$lib" | grep -E 'R(UN)?PATH' | grep -qF "$build"; then
  fail "installed library has an RPATH into the build tree: $(readelf -d "$lib" | grep -E 'R(UN)?PATH')"
fi
cli=$prefix/bin/indexcache
if [[ -e $cli ]]; then
  [[ -x $cli ]] || fail "$cli is not executable"
  if ldd "$cli" | grep -q 'not found'; then
    ldd "$cli" >&2
    fail "installed CLI cannot resolve its libraries"
  fi
  echo "CLI $cli resolves its libraries"
fi

# A C11 consumer: includes the header, takes the address of every exported function the header declares
# (so that each must resolve at link time), and calls ic_last_error_message() when it is declared.
step "C consumer"
decls=()
while read -r sym; do
  if grep -Eq "\\b${sym}[[:space:]]*\\(" "$header"; then decls+=("$sym"); fi
done < <(grep '^ic_' "$work/symbols")
[[ ${#decls[@]} -gt 0 ]] || fail "the header declares none of the exported ic_* functions"
# shellcheck disable=SC2028  # the escapes are C source, written literally
{
  echo '#include <indexcache/indexcache.h>'
  echo '#include <stdio.h>'
  echo 'typedef void (*ic_any_fn)(void);'
  echo 'int main(void) {'
  echo '  volatile ic_any_fn fns[] = {'
  for s in "${decls[@]}"; do echo "    (ic_any_fn)&$s,"; done
  echo '  };'
  echo '  size_t n = 0;'
  echo '  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); ++i) n += fns[i] != 0;'
  if grep -Eq '\bic_last_error_message[[:space:]]*\(' "$header"; then
    echo '  const char* msg = ic_last_error_message();'
    echo '  printf("ic_last_error_message: \"%s\"\n", msg ? msg : "(null)");'
  fi
  echo '#ifdef IC_VERSION_STRING'
  echo '  printf("header version %s\n", IC_VERSION_STRING);'
  echo '#endif'
  echo '  printf("resolved %zu ic_* functions\n", n);'
  echo '  return n == sizeof(fns) / sizeof(fns[0]) ? 0 : 1;'
  echo '}'
} > "$work/main.c"

step "pkg-config"
export PKG_CONFIG_PATH=$pcdir
pkg-config --exists indexcache || fail "pkg-config does not find indexcache in $pcdir"
pc_flags=$(pkg-config --cflags --libs indexcache)
echo "pkg-config indexcache $(pkg-config --modversion indexcache): $pc_flags"
# shellcheck disable=SC2086
cc -std=c11 -Wall -Wextra -Werror -o "$work/consumer_pc" "$work/main.c" $pc_flags ||
  fail "C consumer does not build with pkg-config flags"
LD_LIBRARY_PATH=$libdir "$work/consumer_pc" | tee "$work/consumer_pc.out" ||
  fail "C consumer (pkg-config) failed to run"
# The header's IC_VERSION_STRING (when it has one) must be the packaged version.
header_version=$(sed -n 's/^header version //p' "$work/consumer_pc.out")
if [[ -n $header_version && $header_version != "$(pkg-config --modversion indexcache)" ]]; then
  fail "header says version $header_version, indexcache.pc says $(pkg-config --modversion indexcache)"
fi

step "find_package(indexcache)"
mkdir -p "$work/consumer"
cp "$work/main.c" "$work/consumer/main.c"
cat > "$work/consumer/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(indexcache_consumer C)
find_package(indexcache ${WANT_VERSION} REQUIRED)  # exercises indexcacheConfigVersion.cmake
message(STATUS "found indexcache ${indexcache_VERSION} in ${indexcache_DIR}")
add_executable(consumer main.c)
set_target_properties(consumer PROPERTIES C_STANDARD 11)
target_compile_options(consumer PRIVATE -Wall -Wextra -Werror)
target_link_libraries(consumer PRIVATE indexcache::indexcache)
CMAKE
cmake -S "$work/consumer" -B "$work/consumer/build" -DCMAKE_PREFIX_PATH="$prefix" \
  -DWANT_VERSION="$(pkg-config --modversion indexcache)" \
  -DCMAKE_BUILD_TYPE=Release > "$work/consumer.log" || { cat "$work/consumer.log"; fail "find_package(indexcache) failed"; }
grep 'found indexcache' "$work/consumer.log"
cmake --build "$work/consumer/build" > "$work/consumer_build.log" ||
  { cat "$work/consumer_build.log"; fail "C consumer does not build with indexcache::indexcache"; }
# CMake gives the consumer a build RPATH to the imported library; LD_LIBRARY_PATH is not needed.
"$work/consumer/build/consumer" || fail "C consumer (find_package) failed to run"

echo "PASS: install test"
