#!/usr/bin/env bash
# The third-party author's path, end to end: install clhost into a fresh prefix, generate a
# plug-in of every kind in C and C++ with `clhost new-plugin`, build each out of tree against the
# installed package and run its generated tests, build the examples/ the same way and run their
# tests, and build one plug-in with pkg-config and a bare compiler.
#
# usage: out_of_tree.sh BUILD_DIR SOURCE_DIR WORK_DIR
set -euo pipefail
build=$1
source=$2
work=$3
rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
clhost="$prefix/bin/clhost"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
configure() {  # source dir, build dir
  cmake -S "$1" -B "$2" "${generator[@]}" "${launcher[@]}" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_FLAGS=-Werror -DCMAKE_CXX_FLAGS=-Werror >/dev/null
}

for kind in regularizer batch_policy profiler; do
  for lang in c cxx; do
    name="made_${kind}_${lang}"
    echo "== new-plugin --kind $kind --lang $lang"
    (cd "$work" && "$clhost" new-plugin --kind "$kind" --name "$name" --lang "$lang" \
      >"$work/$name.out")
    # The installed clhost knows its own prefix and says it.
    grep -q -- "-DCMAKE_PREFIX_PATH=$prefix\$" "$work/$name.out"
    grep -q -- "-DCMAKE_PREFIX_PATH=$prefix " "$work/$name/CMakeLists.txt"
    configure "$work/$name" "$work/$name/build"
    # A C or C++ project that builds no LibTorch plug-in never looks for LibTorch.
    if grep -q "Torch_DIR\|TORCH_" "$work/$name/build/CMakeCache.txt"; then
      echo "a project without TORCH plug-ins looked for LibTorch" >&2
      exit 1
    fi
    cmake --build "$work/$name/build"
    ctest --test-dir "$work/$name/build" --output-on-failure
    # Every template is resumable; the C regularizer's anchors survive a kill and a resume.
    "$clhost" plugins show "$name" --plugin-path "$work/$name/build" | grep -q "resumable    yes"
    if [[ $kind == regularizer && $lang == c ]]; then
      run="$work/$name/killed_run"
      if CLHOST_TEST_KILL_AT=step:70 "$clhost" run -q --config "$work/$name/test_run.toml" \
          --plugin-path "$work/$name/build" --output "$run" 2>/dev/null; then
        echo "the run was to be killed at step 70" >&2
        exit 1
      fi
      "$clhost" run -q --resume "$run" >/dev/null
      grep -q '"complete"' "$run/status.json"
    fi
  done
done

echo "== examples/"
configure "$source/examples" "$work/examples"
cmake --build "$work/examples"
ctest --test-dir "$work/examples" --output-on-failure

echo "== a resumed Synaptic Intelligence run equals an uninterrupted one"
si=(--config "$source/examples/quick.toml" --plugin-path "$work/examples" --plugins synaptic_intelligence
  --set run.checkpoint_every=25)
"$clhost" run -q "${si[@]}" --output "$work/si_whole" >/dev/null
if CLHOST_TEST_KILL_AT=step:130 "$clhost" run -q "${si[@]}" --output "$work/si_killed" 2>/dev/null; then
  echo "the run was to be killed at step 130" >&2
  exit 1
fi
"$clhost" run -q --resume "$work/si_killed" >/dev/null
matrix() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accuracy_matrix"])' "$1"; }
test "$(matrix "$work/si_whole/results.json")" = "$(matrix "$work/si_killed/results.json")"

echo "== pkg-config"
mkdir -p "$work/pkgconfig_build"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
# shellcheck disable=SC2046  # the flags are meant to split
cc -std=c11 -Wall -Wextra -Werror -shared -fPIC $(pkg-config --cflags clhost-sdk) \
  "$work/made_profiler_c/made_profiler_c.c" $(pkg-config --libs clhost-sdk) \
  -o "$work/pkgconfig_build/clhost_made_profiler_c.so"
"$clhost" plugins show made_profiler_c --plugin-path "$work/pkgconfig_build" | grep -q "kind         profiler"
test "$(pkg-config --variable=abi_version clhost-sdk)" = "$("$clhost" --version | sed 's/.*ABI \([0-9.]*\)).*/\1/')"
echo "out-of-tree plug-ins: all built, loaded and ran"
