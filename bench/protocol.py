#!/usr/bin/env python3
"""Runs the continual-learning protocol over arms x seeds with the real clhost binary and writes
a JSON summary (mean and sample standard deviation of average accuracy and forgetting per arm).

  python3 bench/protocol.py --scenario split --seeds 0 1 2 --out bench/results/split.json

Arms: finetune, l2, ewc_separate, ewc_online, ewc_efficient (see --arms), and the low-rank Fisher
plug-in at any compression ratio: lowrank_<ratio> (e.g. lowrank_0.01). Each run keeps its run
directory under --runs; a finished run (results.json present) is not rerun. --jobs runs several
at once. --plot writes accuracy and forgetting against resident bytes per parameter as a PNG
(needs Debian's python3-matplotlib: run with /usr/bin/python3).

  python3 bench/protocol.py --scenario split --arms ewc_efficient ewc_separate lowrank_0.002 \
      lowrank_0.01 lowrank_0.05 --set train.iterations=1000 --jobs 2 \
      --out bench/results/lowrank_split.json --plot docs/lowrank_split.png
"""
import argparse
import concurrent.futures
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


def lowrank_config(base_config, arm, lowrank_set, directory):
    """The scenario's EWC config with its pipeline replaced by lowrank_fisher at the arm's ratio
    (same lambda and labels as the EWC arms)."""
    with open(base_config) as handle:
        text = handle.read()
    text = text[:text.index("[[pipeline]]")]
    ratio = float(arm[len("lowrank_"):])
    text += ("[[pipeline]]\nplugin = \"lowrank_fisher\"\nlambda = 1000.0\n"
             f"labels = \"expectation\"\ncompression_ratio = {ratio}\n"
             "max_bytes_per_parameter = 0\n")
    for item in lowrank_set:
        text += item + "\n"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{os.path.basename(base_config)[:-5]}_{arm}.toml")
    with open(path, "w") as handle:
        handle.write(text)
    return path


def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm, entry in summary["arms"].items():
        size = entry["runs"][0]["state_bytes_per_parameter"]
        if size is None:
            continue
        for axis, metric in zip(axes, ("average_accuracy", "forgetting")):
            axis.errorbar([size], [entry[metric]["mean"]], yerr=[entry[metric]["sd"]], fmt="o",
                          capsize=4, label=arm, color="C0" if arm.startswith("lowrank") else "C3")
            rank = entry["runs"][0].get("rank")
            label = f"rank {rank}" if arm.startswith("lowrank") else arm.replace("ewc_", "EWC ")
            axis.annotate(label, (size, entry[metric]["mean"]),
                          textcoords="offset points", xytext=(6, 4), fontsize=8)
    for axis, title in zip(axes, ("average accuracy", "forgetting")):
        axis.set_xscale("log")
        axis.set_xlabel("resident regularizer state, bytes per parameter (log)")
        axis.set_title(f"{title}, {summary['scenario']} Fashion-MNIST, {len(summary['seeds'])} seeds")
        axis.grid(True, alpha=0.3)
    figure.suptitle("diagonal EWC (red) vs low-rank + diagonal Fisher (blue, online) at three ranks; mean ± sd")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["split", "permuted"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=[a for a in ARMS if a not in ("ewc_efficient_fp32", "ewc_efficient_int8_fp16")])
    parser.add_argument("--binary", default=os.path.join(ROOT, "build", "bin", "clhost"))
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "protocol"))
    parser.add_argument("--set", action="append", default=[], help="extra --set for every run")
    parser.add_argument("--lowrank-set", action="append", default=[],
                        help="extra plug-in line for lowrank_* arms, in TOML (e.g. 'store = false')")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--plot", help="PNG: accuracy and forgetting vs bytes per parameter")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    for arm in args.arms:
        if arm not in ARMS and not arm.startswith("lowrank_"):
            parser.error(f"unknown arm {arm}")

    config = os.path.join(ROOT, "configs", f"{args.scenario}_fmnist_ewc.toml")
    summary = {"scenario": args.scenario, "config": config, "seeds": args.seeds,
               "set": args.set, "lowrank_set": args.lowrank_set, "arms": {}}

    def run_dir_of(arm, seed):
        return os.path.join(args.runs, f"{args.scenario}_{arm}_seed{seed}")

    def run_one(arm, seed):
        run_dir = run_dir_of(arm, seed)
        if os.path.exists(os.path.join(run_dir, "results.json")):
            return
        if arm.startswith("lowrank_"):
            arm_config = lowrank_config(config, arm, args.lowrank_set, args.runs)
            extra = []
        else:
            arm_config, extra = config, ARMS[arm]
        command = [args.binary, "run", "--config", arm_config, "--output", run_dir, "-q",
                   "--set", f"run.seed={seed}"] + extra
        for extra in args.set:
            command += ["--set", extra]
        print(" ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(run_one, arm, seed) for arm in args.arms for seed in args.seeds]:
            future.result()

    for arm in args.arms:
        rows = []
        for seed in args.seeds:
            results_path = os.path.join(run_dir_of(arm, seed), "results.json")
            with open(results_path) as handle:
                results = json.load(handle)
            report = results["plugins"][0].get("report", {}) if results["plugins"] else {}
            rows.append({"seed": seed,
                         "average_accuracy": results["metrics"]["average_accuracy"],
                         "forgetting": results["metrics"]["forgetting"],
                         "wall_seconds": results["wall_seconds"],
                         "state_bytes_per_parameter": report.get("state_bytes_per_parameter"),
                         "rank": report.get("rank")})
        entry = {"runs": rows}
        for metric in ("average_accuracy", "forgetting", "wall_seconds"):
            values = [row[metric] for row in rows]
            entry[metric] = {"mean": statistics.mean(values),
                             "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
        summary["arms"][arm] = entry
        print(f"{arm:14s} avg acc {entry['average_accuracy']['mean']:.4f} ± {entry['average_accuracy']['sd']:.4f}"
              f"  forgetting {entry['forgetting']['mean']:.4f} ± {entry['forgetting']['sd']:.4f}"
              f"  bytes/param {rows[0]['state_bytes_per_parameter']}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=2)
    if args.plot:
        plot(summary, args.plot)


if __name__ == "__main__":
    main()
