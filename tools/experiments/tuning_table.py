#!/usr/bin/env python3
"""Tuned arms against fine-tuning, from `clhost sweep` outputs: the README's tuning tables.

For every arm, the sweep's chosen combination (sweep.json -> best) with its validation score,
its test-set average accuracy and forgetting over the seeds (the chosen runs' results.json), and
the seed-by-seed difference to fine-tuning runs on the same seeds. Means carry 95% Student-t
intervals; forgetting is mean +- sd. Writes the Markdown table to stdout and, with --json, every
per-seed figure it used.

Usage:
  tools/experiments/tuning_table.py --finetune RUN_DIR [RUN_DIR...] \\
      --arm 'LABEL=SWEEP_DIR' [--arm ...] [--cpu SWEEP_DIR=SECONDS ...] [--json OUT.json]
SWEEP_DIR is a `clhost sweep --output` directory (sweep.json and its runs/).
"""
import argparse
import json
import math
import pathlib
import statistics
import sys

# Two-sided 95% Student-t quantiles by degrees of freedom (n - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def half_width(values):
    if len(values) < 2:
        return float("nan")
    return T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def with_interval(values):
    mean, half = statistics.fmean(values), half_width(values)
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def with_sd(values):
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def read_json(path):
    """The JSON file at `path`, or exit naming it and what is wrong."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as error:
        sys.exit(f"{path}: {error}")


def run_figures(run_dir):
    results = read_json(pathlib.Path(run_dir) / "results.json")
    metrics = results["metrics"]
    return {"seed": results["config"]["run"]["seed"], "run": str(run_dir),
            "average_accuracy": metrics["average_accuracy"], "forgetting": metrics["forgetting"]}


def number(text):
    """A swept value as the README writes it: 0.01, 100, 1e5."""
    value = float(text)
    if value != 0 and abs(value) >= 1e4:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}"


def key_name(key):
    return key.split(".")[-1].replace("lambda", "λ").replace("gamma", "γ")


def grid_text(axes):
    return " × ".join(
        f"{key_name(axis['key'])} ∈ {{{', '.join(number(v) for v in axis['values'])}}}"
        for axis in axes)


def chosen_text(axes, values):
    return ", ".join(f"{key_name(axis['key'])} = {number(values[axis['key']])}" for axis in axes)


def arm_row(label, sweep_dir, finetune_by_seed, cpu_seconds):
    sweep = read_json(pathlib.Path(sweep_dir) / "sweep.json")
    best = sweep["best"]
    point = next(p for p in sweep["points"] if p["index"] == best["index"])
    runs = sorted((run_figures(run) for run in point["runs"]), key=lambda r: r["seed"])
    missing = [r["seed"] for r in runs if r["seed"] not in finetune_by_seed]
    if missing:
        sys.exit(f"{label}: no fine-tuning run for seed(s) {missing}")
    accuracy = [r["average_accuracy"] for r in runs]
    paired = [r["average_accuracy"] - finetune_by_seed[r["seed"]]["average_accuracy"] for r in runs]
    validation = best["validation"]
    cpu = f"{cpu_seconds:,.0f} s" if cpu_seconds is not None else "—"
    cells = [label, grid_text(sweep["axes"]), chosen_text(sweep["axes"], best["values"]),
             f"{validation['mean']:.3f} [{validation['low']:.3f}, {validation['high']:.3f}]",
             with_interval(accuracy), with_sd([r["forgetting"] for r in runs]),
             f"{statistics.fmean(paired):+.3f} ± {half_width(paired):.3f}",
             f"{sweep['tasks_trained']} ({sweep['tasks_without_halving']})", cpu]
    record = {"label": label, "sweep": str(sweep_dir), "config": sweep["config"],
              "chosen": best["values"], "validation": validation, "runs": runs,
              "paired_difference_to_finetuning": paired, "tasks_trained": sweep["tasks_trained"],
              "tasks_without_halving": sweep["tasks_without_halving"], "cpu_user_s": cpu_seconds}
    return "| " + " | ".join(cells) + " |", record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--finetune", nargs="+", required=True, help="fine-tuning run directories")
    parser.add_argument("--arm", action="append", required=True, help="LABEL=SWEEP_DIR")
    parser.add_argument("--cpu", action="append", default=[], help="SWEEP_DIR=SECONDS of CPU")
    parser.add_argument("--json", help="also write every per-seed figure here")
    args = parser.parse_args()
    finetune = sorted((run_figures(run) for run in args.finetune), key=lambda r: r["seed"])
    finetune_by_seed = {r["seed"]: r for r in finetune}
    cpu_by_dir = {}
    for item in args.cpu:
        directory, _, seconds = item.rpartition("=")
        try:
            cpu_by_dir[str(pathlib.Path(directory))] = float(seconds)
        except ValueError:
            sys.exit(f"--cpu {item!r}: expected SWEEP_DIR=SECONDS")
    header = ("| Arm | Grid | Chosen | Validation | Test: average accuracy | Test: forgetting | "
              "vs fine-tuning | Sweep: tasks trained (of all) | CPU |")
    rows = [header, "|" + "---|" * 9,
            f"| fine-tuning | — | — | — | {with_interval([r['average_accuracy'] for r in finetune])}"
            f" | {with_sd([r['forgetting'] for r in finetune])} | — | — | — |"]
    records = []
    for item in args.arm:
        label, separator, sweep_dir = item.partition("=")
        if not separator:
            sys.exit(f"--arm {item!r}: expected LABEL=SWEEP_DIR")
        row, record = arm_row(label, sweep_dir, finetune_by_seed,
                              cpu_by_dir.get(str(pathlib.Path(sweep_dir))))
        rows.append(row)
        records.append(record)
    print("\n".join(rows))
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"finetune": finetune, "arms": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
