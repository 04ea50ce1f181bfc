#!/usr/bin/env python3
"""Runs the continual-learning protocol over arms x seeds with the real clhost binary and writes
a JSON summary (mean and sample standard deviation of average accuracy and forgetting per arm).

  python3 bench/protocol.py --scenario split --seeds 0 1 2 --out bench/results/split.json

Arms: finetune, l2, ewc_separate, ewc_online, ewc_efficient (see --arms). Each run keeps its
run directory under --runs; a finished run (results.json present) is not rerun.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARMS = {
    "finetune": ["--plugins", ""],
    "l2": ["--plugins", "l2"],
    "ewc_separate": ["--set", "fisher_computation.use_memory_efficient=false", "--set", "pipeline.0.mode=\"separate\""],
    "ewc_online": ["--set", "fisher_computation.use_memory_efficient=false", "--set", "pipeline.0.mode=\"online\""],
    "ewc_efficient": ["--set", "fisher_computation.use_memory_efficient=true"],
    "ewc_efficient_int8_fp16": ["--set", "fisher_computation.use_memory_efficient=true", "--set", "pipeline.0.state_dtype=\"int8_fp16\""],
    "ewc_efficient_fp32": ["--set", "fisher_computation.use_memory_efficient=true", "--set", "pipeline.0.state_dtype=\"fp32\""],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["split", "permuted"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=[a for a in ARMS if a not in ("ewc_efficient_fp32", "ewc_efficient_int8_fp16")], choices=list(ARMS))
    parser.add_argument("--binary", default=os.path.join(ROOT, "build", "bin", "clhost"))
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "protocol"))
    parser.add_argument("--set", action="append", default=[], help="extra --set for every run")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    config = os.path.join(ROOT, "configs", f"{args.scenario}_fmnist_ewc.toml")
    summary = {"scenario": args.scenario, "config": config, "seeds": args.seeds, "arms": {}}
    for arm in args.arms:
        rows = []
        for seed in args.seeds:
            run_dir = os.path.join(args.runs, f"{args.scenario}_{arm}_seed{seed}")
            results_path = os.path.join(run_dir, "results.json")
            if not os.path.exists(results_path):
                command = [args.binary, "run", "--config", config, "--output", run_dir, "-q",
                           "--set", f"run.seed={seed}"] + ARMS[arm]
                for extra in args.set:
                    command += ["--set", extra]
                print(" ".join(command), file=sys.stderr, flush=True)
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            with open(results_path) as handle:
                results = json.load(handle)
            report = results["plugins"][0].get("report", {}) if results["plugins"] else {}
            rows.append({"seed": seed,
                         "average_accuracy": results["metrics"]["average_accuracy"],
                         "forgetting": results["metrics"]["forgetting"],
                         "wall_seconds": results["wall_seconds"],
                         "state_bytes_per_parameter": report.get("state_bytes_per_parameter")})
        entry = {"runs": rows}
        for metric in ("average_accuracy", "forgetting", "wall_seconds"):
            values = [row[metric] for row in rows]
            entry[metric] = {"mean": statistics.mean(values),
                             "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
        summary["arms"][arm] = entry
        print(f"{arm:14s} avg acc {entry['average_accuracy']['mean']:.4f} ± {entry['average_accuracy']['sd']:.4f}"
              f"  forgetting {entry['forgetting']['mean']:.4f} ± {entry['forgetting']['sd']:.4f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
