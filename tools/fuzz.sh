#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader of untrusted input (docs/testing.md, "Fuzzing").
#
#   tools/fuzz.sh [--seconds N | --minutes N] [--seed S] [--build DIR] [TARGET...]
#
# Configures and builds DIR (default build-fuzz: clang, CLHOST_FUZZ=ON, address and undefined
# sanitizers) when needed, then runs each target (default: all) for the given time (default 30 s)
# on a working copy of its seed corpus (tests/fuzz/corpus/<target>, plus its kept regressions).
# Prints one line per target: executions, coverage (edges), corpus size, crashes; writes the same
# to DIR/fuzz-summary.json. A finding in clhost's code is copied to tests/fuzz/regressions/<target>/
# — CTest replays it from then on — and the script exits 1. A crash whose report starts inside
# HDF5 or LibTorch (uninstrumented libraries clhost cannot fix) is copied to
# tests/fuzz/library_faults/ and reported, without failing (tests/fuzz/library_faults/README.md).
# --seed makes a run repeatable (CI uses --seed 1); without it each run explores anew.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds=30
seed=0
build="$root/build-fuzz"
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --minutes) seconds=$(( $2 * 60 )); shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --build) build="$(realpath -m "$2")"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=$(sed -n 's/^set(CLHOST_FUZZ_TARGETS \(.*\))$/\1/p' "$root/tests/fuzz/CMakeLists.txt")
[[ ${#targets[@]} -gt 0 ]] || read -r -a targets <<< "$all"
for target in "${targets[@]}"; do
  [[ " $all " == *" $target "* ]] || { echo "fuzz.sh: no target '$target' (targets: $all)" >&2; exit 2; }
done

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  mkdir -p "$build"
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCLHOST_FUZZ=ON \
    -DCLHOST_SANITIZE=address,undefined -DCLHOST_BUILD_BENCHMARKS=OFF > "$build/configure.log"
fi
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}" fuzz_replay > "$build/fuzz-build.log" \
  || { tail -30 "$build/fuzz-build.log"; exit 1; }

# LibTorch and the other Debian libraries are not instrumented; per-input leak checks stay on,
# with the library suppressions in tests/fuzz/lsan.supp (each justified there).
# allocator_may_return_null=1: an impossible request returns NULL as glibc's malloc does (HDF5
# checks for it and reports an error) instead of aborting; in clhost's code the same request
# throws std::bad_alloc, which escapes the reader and is still a finding.
export ASAN_OPTIONS="${ASAN_OPTIONS:-allocator_may_return_null=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/tests/fuzz/lsan.supp}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
summary="$build/fuzz-summary.json"
echo "[" > "$summary"
failed=0
separator=""
printf '%-14s %10s %8s %8s %8s\n' target executions edges corpus crashes
for target in "${targets[@]}"; do
  work="$build/fuzz-work/$target"
  rm -rf "$work" && mkdir -p "$work/corpus" "$work/crashes"
  cp -r "$root/tests/fuzz/corpus/$target/." "$work/corpus/"
  [[ -d "$root/tests/fuzz/regressions/$target" ]] && cp -r "$root/tests/fuzz/regressions/$target/." "$work/corpus/"
  [[ "$target" == config ]] && cp "$root"/configs/*.toml "$work/corpus/"
  log="$work/fuzz.log"
  status=0
  "$build/bin/fuzz_$target" "$work/corpus" -max_total_time="$seconds" -timeout=20 \
    -rss_limit_mb=4096 -seed="$seed" -print_final_stats=1 -artifact_prefix="$work/crashes/" \
    > "$log" 2>&1 || status=$?
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  edges=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  corpus=$(find "$work/corpus" -type f | wc -l)
  crashes=$(find "$work/crashes" -type f | wc -l)
  # The first frame of the sanitizer's report says whose fault a crash is.
  # (The sanitizer's interceptors — malloc, memcpy, operator new... — are frames of the fuzz
  # binary without a source line, and glibc's own string functions sit under them: skipped.)
  first_frame=$(sed -n '/^==[0-9]*==ERROR: \(AddressSanitizer\|UndefinedBehaviorSanitizer\)/,$p' "$log" \
    | grep -a -E '^ +#[0-9]+ ' | grep -a -v -E '\(/[^ ]*/bin/fuzz_[a-z_0-9]+\+0x[0-9a-f]+\)' \
    | grep -a -v -E 'sysdeps/|/libc\.so' | head -1 || true)
  if [[ $crashes -gt 0 && $first_frame =~ lib(hdf5_serial|torch_cpu|c10)\.so ]] \
     && ! grep -aq 'fuzz finding' "$log"; then
    mkdir -p "$root/tests/fuzz/library_faults"
    for crash in "$work"/crashes/*; do cp "$crash" "$root/tests/fuzz/library_faults/${target}_$(basename "$crash")"; done
    echo "fuzz.sh: $target: a fault inside a library, not clhost's: $first_frame" >&2
    echo "fuzz.sh: kept in tests/fuzz/library_faults/ (list it in its README)" >&2
  elif [[ $status -ne 0 || $crashes -gt 0 ]]; then
    failed=1
    mkdir -p "$root/tests/fuzz/regressions/$target"
    cp "$work"/crashes/* "$root/tests/fuzz/regressions/$target/" 2>/dev/null || true
    echo "fuzz.sh: $target found a problem (exit $status); its report ($log):" >&2
    # The report starts at the finding's own message (or the sanitizer's); a CI log is all
    # there is of a clean clone's run, so the input itself is printed too, to replay it here.
    sed -n '/fuzz finding\|ERROR: \(AddressSanitizer\|LeakSanitizer\|libFuzzer\)\|runtime error:/,$p' "$log" \
      | head -80 >&2
    for crash in "$work"/crashes/*; do
      [[ -f $crash ]] || continue
      echo "fuzz.sh: input $(basename "$crash") ($(stat -c %s "$crash") bytes), base64:" >&2
      head -c 8192 "$crash" | base64 >&2
    done
  fi
  printf '%-14s %10s %8s %8s %8s\n' "$target" "${executions:-?}" "${edges:-?}" "$corpus" "$crashes"
  printf '%s{"target": "%s", "seconds": %s, "executions": %s, "edges": %s, "corpus": %s, "crashes": %s, "exit": %s}\n' \
    "$separator" "$target" "$seconds" "${executions:-null}" "${edges:-null}" "$corpus" "$crashes" "$status" >> "$summary"
  separator=","
done
echo "]" >> "$summary"
exit $failed
