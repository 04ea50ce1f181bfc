#!/usr/bin/env bash
# Regenerates the seed corpora that come from real runs (checkpoint files, plug-in states, a run
# directory for the report) with the built clhost: bash tests/fuzz/make_corpus.sh [BUILD_DIR].
# The hand-written seeds (configs, arm specs, IDX headers) are kept as they are.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$(cd "${1:-$here/../../build}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A tiny model (784-8-10, as fuzz_plugin_state.cpp and fuzz_checkpoint.cpp build), two short
# tasks, a checkpoint every 5 steps so the last one falls inside task 2 (with data_order.bin).
base='[run]
seed = 1
checkpoint_every = 5
[data]
scenario = "split"
num_tasks = 2
train_samples_per_task = 64
test_samples_per_task = 32
[model]
hidden = [8]
[train]
batch_size = 16
iterations = 8
'
run() {  # run NAME EXTRA_TOML
  printf '%s%s' "$base" "$2" > "$work/$1.toml"
  "$build/bin/clhost" run --config "$work/$1.toml" --output "$work/$1" --quiet > /dev/null
}
run regularizers '[[pipeline]]
plugin = "ewc"
state_dtype = "int8_fp16"
[[pipeline]]
plugin = "ewc"
state_dtype = "int8"
store = false
[[pipeline]]
plugin = "ewc"
state_dtype = "int4_int8"
store = false
[[pipeline]]
plugin = "ewc"
state_dtype = "fp32"
store = false
[[pipeline]]
plugin = "lowrank_fisher"
max_rank = 2
store = false
[[pipeline]]
plugin = "l2"
[[pipeline]]
plugin = "mas"
[[pipeline]]
plugin = "lwf"
[[pipeline]]
plugin = "fixed"
'
run separate 'optimizer = "sgd"
momentum = 0.9
[fisher_computation]
use_memory_efficient = false
[[pipeline]]
plugin = "ewc"
[[pipeline]]
plugin = "ewc"
mode = "online"
store = false
[[pipeline]]
plugin = "dynamic"
'
run replay '[[pipeline]]
plugin = "replay"
capacity = 16
[[pipeline]]
plugin = "estimate"
'

# seed FILE SELECTOR OUT: the file's bytes behind one selector byte.
seed() { { printf "\\x$(printf %02x "$2")"; cat "$1"; } > "$3"; }
latest() { echo "$work/$1/checkpoints/$(cat "$work/$1/checkpoints/LATEST")"; }

state="$here/corpus/plugin_state"
rm -rf "$state" && mkdir -p "$state"
r=$(latest regularizers); s=$(latest separate); p=$(latest replay)
seed "$r/plugin_0_ewc.state" 0 "$state/ewc_int8_fp16"
seed "$r/plugin_1_ewc.state" 1 "$state/ewc_int8"
seed "$r/plugin_2_ewc.state" 2 "$state/ewc_int4_int8"
seed "$r/plugin_3_ewc.state" 3 "$state/ewc_fp32"
seed "$s/plugin_0_ewc.state" 4 "$state/ewc_separate"
seed "$s/plugin_1_ewc.state" 5 "$state/ewc_online"
seed "$r/plugin_4_lowrank_fisher.state" 6 "$state/lowrank_fisher"
seed "$r/plugin_5_l2.state" 7 "$state/l2"
seed "$r/plugin_8_fixed.state" 8 "$state/fixed"
seed "$s/plugin_2_dynamic.state" 9 "$state/dynamic"
seed "$p/plugin_1_estimate.state" 10 "$state/estimate"
seed "$r/plugin_6_mas.state" 11 "$state/mas"
seed "$r/plugin_7_lwf.state" 12 "$state/lwf"
seed "$p/plugin_0_replay.state" 13 "$state/replay"
seed "$r/plugin_7_lwf.held" 14 "$state/lwf_held"
seed "$p/plugin_0_replay.held" 15 "$state/replay_held"

checkpoint="$here/corpus/checkpoint"
rm -rf "$checkpoint" && mkdir -p "$checkpoint"
# The manifest target's checkpoint directory holds one file, model.bin = "abc".
/usr/bin/python3 -c 'import json, sys, zlib
manifest = json.load(open(sys.argv[1]))
manifest["files"] = [{"name": "model.bin", "bytes": 3, "crc32": zlib.crc32(b"abc")}]
sys.stdout.write(json.dumps(manifest, indent=1))' "$r/manifest.json" > "$work/manifest"
seed "$work/manifest" 0 "$checkpoint/manifest"
seed "$r/model.bin" 1 "$checkpoint/model"
seed "$r/optimizer.bin" 2 "$checkpoint/optimizer_adam"
seed "$s/optimizer.bin" 3 "$checkpoint/optimizer_sgd"
seed "$r/generator.bin" 4 "$checkpoint/generator"
seed "$r/trainer.json" 5 "$checkpoint/trainer"
/usr/bin/python3 -c 'import random, struct, sys
order = list(range(16)); random.Random(1).shuffle(order)
sys.stdout.buffer.write(struct.pack("<16q", *order))' > "$work/order16"
seed "$work/order16" 6 "$checkpoint/data_order"

report="$here/corpus/report"
rm -rf "$report" && mkdir -p "$report"
{ cat "$work/replay/results.json"; printf '\0'; cat "$work/replay/metrics.csv"; } > "$report/replay_run"
hdf5="$here/corpus/hdf5"
rm -rf "$hdf5" && mkdir -p "$hdf5"
seed "$work/regularizers/fisher.h5" 1 "$hdf5/fisher_store_index"
/usr/bin/python3 -c 'import h5py, numpy, sys
with h5py.File(sys.argv[1], "w") as f:
    for split, n in (("train", 8), ("test", 4)):
        f[split + "/x"] = numpy.arange(n * 4, dtype=numpy.uint8).reshape(n, 2, 2)
        f[split + "/y"] = numpy.arange(n, dtype=numpy.int64) % 4' "$work/dataset.h5"
seed "$work/dataset.h5" 0 "$hdf5/dataset"
ls -l "$state" "$checkpoint" "$report" "$hdf5" | awk '{s+=$5} END {print "corpus bytes:", s}'
