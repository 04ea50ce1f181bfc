#!/usr/bin/env bash
# The three scenarios of continual learning (van de Ven et al., "Three types of incremental
# learning", 2022) on split Fashion-MNIST with the full protocol of configs/split_fmnist.toml:
# task-, domain- and class-incremental, for fine-tuning, EWC, MAS, LwF and experience replay
# (1000 and 100 samples), SEEDS seeds each. Every run goes to
#   OUT/<scenario>/<method>/seed_<k>   (a finished run, with its results.json, is skipped)
# and tools/experiments/three_scenarios_table.py summarises them.
# Usage: tools/experiments/three_scenarios.sh [OUT (runs/three_scenarios)] [SEEDS (3)] [JOBS (2)]
#   SCENARIOS="class task" METHODS="none replay1000" limit what runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-runs/three_scenarios}
seeds=${2:-3}
jobs=${3:-2}
clhost=${CLHOST:-$root/build/bin/clhost}
scenarios=${SCENARIOS:-"class task domain"}
methods=${METHODS:-"none ewc mas lwf replay1000 replay100"}

# The pipeline of each method, as clhost run arguments. Settings are the shipped or the
# reference implementations' defaults, not tuned (see issue "clhost sweep").
pipeline() {
  case $1 in
    none) echo "--plugins ''" ;;
    ewc) echo "--plugins ewc --set pipeline.0.lambda=1000" ;;
    mas) echo "--plugins mas" ;;
    lwf) echo "--plugins lwf" ;;
    replay1000) echo "--plugins replay --set pipeline.0.capacity=1000" ;;
    replay100) echo "--plugins replay --set pipeline.0.capacity=100" ;;
    *) echo "unknown method $1" >&2; exit 2 ;;
  esac
}

commands=()
for scenario in $scenarios; do
  for method in $methods; do
    for ((seed = 0; seed < seeds; ++seed)); do
      dir="$out/$scenario/$method/seed_$seed"
      [[ -f "$dir/results.json" ]] && continue
      rm -rf "$dir"
      mkdir -p "$(dirname "$dir")"
      commands+=("$clhost run -q --config $root/configs/split_fmnist.toml $(pipeline "$method") \
--set data.incremental='\"$scenario\"' --set run.seed=$seed --output $dir > $dir.log 2>&1 \
|| { echo \"failed: $dir (see $dir.log)\"; tail -5 $dir.log; }")
    done
  done
done
echo "${#commands[@]} runs to do, $jobs at a time"
printf '%s\n' "${commands[@]}" | xargs -d '\n' -P "$jobs" -I{} bash -c '{}'
