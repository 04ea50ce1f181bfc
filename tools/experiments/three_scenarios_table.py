#!/usr/bin/env python3
"""Summarises tools/experiments/three_scenarios.sh: average accuracy (and forgetting) over the
seeds per method and scenario, mean with its 95% Student-t interval, as a Markdown table.

Usage: tools/experiments/three_scenarios_table.py [OUT (runs/three_scenarios)]
"""
import json
import math
import pathlib
import statistics
import sys

# Two-sided 95% Student-t quantiles by degrees of freedom (n - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
SCENARIOS = [("task", "Task-IL"), ("domain", "Domain-IL"), ("class", "Class-IL")]
METHODS = [("none", "none (fine-tuning)"), ("ewc", "EWC (λ = 1000)"), ("mas", "MAS (λ = 1)"),
           ("lwf", "LwF (α = 1, T = 2)"), ("replay1000", "replay, 1000 samples"),
           ("replay100", "replay, 100 samples")]


def interval(values):
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half


def cell(values, percent=True):
    if not values:
        return "–"
    mean, half = interval(values)
    scale = 100.0 if percent else 1.0
    text = f"{mean * scale:.1f}"
    return text + (f" ± {half * scale:.1f}" if half is not None else "") + f" (n={len(values)})"


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/three_scenarios")
    rows = {}
    seconds = []
    for scenario, _ in SCENARIOS:
        for method, _ in METHODS:
            accuracy, forgetting = [], []
            for results in sorted((out / scenario / method).glob("seed_*/results.json")):
                data = json.loads(results.read_text())
                accuracy.append(data["metrics"]["average_accuracy"])
                forgetting.append(data["metrics"]["forgetting"])
                seconds.append(data["wall_seconds"])
            rows[(scenario, method)] = (accuracy, forgetting)
    header = "| method | " + " | ".join(name for _, name in SCENARIOS) + " |"
    print("Average accuracy over the 5 tasks after the last (%), mean ± 95% interval over seeds\n")
    print(header)
    print("|---" * (len(SCENARIOS) + 1) + "|")
    for method, name in METHODS:
        print(f"| {name} | " + " | ".join(cell(rows[(s, method)][0]) for s, _ in SCENARIOS) + " |")
    print("\nForgetting (percentage points), same runs\n")
    print(header)
    print("|---" * (len(SCENARIOS) + 1) + "|")
    for method, name in METHODS:
        print(f"| {name} | " + " | ".join(cell(rows[(s, method)][1]) for s, _ in SCENARIOS) + " |")
    if seconds:
        print(f"\n{len(seconds)} runs, {sum(seconds) / 60:.1f} run-minutes "
              f"(median {statistics.median(seconds):.0f} s per run)")


if __name__ == "__main__":
    main()
