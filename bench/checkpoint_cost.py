#!/usr/bin/env python3
"""What training checkpoints cost: runs the real clhost binary on a config and reports, from its
results.json, the checkpoint size, the median time per checkpoint (serialisation + fsync) and
the checkpoints' share of a task's training time; optionally also the same run with
checkpoints at task boundaries only, to compare wall time per task.

  python3 bench/checkpoint_cost.py --config configs/split_fmnist_ewc.toml \
      --set train.iterations=1000 --out bench/results/checkpoint_cost.json
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(config, sets, checkpoint_every, run_dir):
    command = [os.path.join(ROOT, "build", "bin", "clhost"), "run", "-q", "--config", config,
               "--output", run_dir, "--checkpoint-every", str(checkpoint_every)]
    for item in sets:
        command += ["--set", item]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "results.json")) as handle:
        return json.load(handle)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "split_fmnist_ewc.toml"))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--every", type=int, default=500, help="run.checkpoint_every")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                      "checkpoint_cost.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = run(args.config, args.set, args.every, os.path.join(scratch, "run"))
    checkpoints = results["checkpoints"]
    tasks = results["tasks"]
    task_seconds = statistics.median(task["train_seconds"] for task in tasks)
    steps_per_task = statistics.median(task["steps"] for task in tasks)
    seconds = checkpoints["seconds"]
    per_task = len(seconds) / len(tasks)
    summary = {
        "config": os.path.relpath(args.config, ROOT),
        "set": args.set,
        "checkpoint_every": args.every,
        "parameters": results["model"]["parameters"],
        "plugins": [plugin["id"] for plugin in results["plugins"]],
        "checkpoints_written": len(seconds),
        "checkpoint_bytes_last": checkpoints["last_bytes"],
        "checkpoint_seconds_median": statistics.median(seconds),
        "checkpoint_seconds_max": max(seconds),
        "task_train_seconds_median": task_seconds,
        "steps_per_task": steps_per_task,
        "checkpoints_per_task": per_task,
        "share_of_task_time": per_task * statistics.median(seconds) / task_seconds,
        "wall_seconds": results["wall_seconds"],
        "machine": results["machine"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
