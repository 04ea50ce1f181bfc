#!/usr/bin/python3
"""clhost serve: event written to a run's journal -> visible in a real browser (chromium).

A synthetic "running" run (this process stands for its process) is opened on its run page; events
are appended to its events.jsonl one at a time, and a MutationObserver in the page records when
each one shows (the step figure for a progress event, a filled heatmap cell for an evaluation).
Both times are the machine's wall clock. Writes JSON (argument 1, default stdout only).

usage: bench_web_latency.py --clhost build/bin/clhost [--out bench/results/bench_web_latency.json]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "web"))
import browser_test  # noqa: E402  (the server and driver helpers)

OBSERVER = """
window.__seen = {};
const record = () => {
  const step = document.getElementById('fig-step');
  if (step) window.__seen['p' + step.textContent.split('/')[0]] = Date.now();
  const cells = document.querySelectorAll('#heatmap rect.cell.filled').length;
  window.__seen['c' + cells] = window.__seen['c' + cells] || Date.now();
};
new MutationObserver(record).observe(document.getElementById('main'),
  { subtree: true, childList: true, characterData: true });
"""


def process_start_ticks():
    with open("/proc/self/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[19])


def append(journal, event):
    event["t"] = time.time()
    with open(journal, "a") as out:
        out.write(json.dumps(event) + "\n")
    return event["t"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clhost", required=True)
    parser.add_argument("--source", default=os.path.join(os.path.dirname(__file__), ".."))
    parser.add_argument("--plugins", default="")
    parser.add_argument("--out", default="")
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    args.plugins = args.plugins or os.path.join(os.path.dirname(args.clhost), "..", "plugins")
    runs = tempfile.mkdtemp(prefix="clhost-latency-")
    run_dir = os.path.join(runs, "live")
    os.makedirs(run_dir)
    journal = os.path.join(run_dir, "events.jsonl")
    tasks = [{"name": "task%d" % k, "steps": 1000000, "batch_size": 64} for k in range(args.events)]
    append(journal, {"event": "run_begin", "pid": os.getpid(), "pid_start": process_start_ticks(),
                     "resumed": False, "task": 0, "step": 0, "global_step": 0, "tasks": tasks,
                     "metric": "accuracy", "better": "higher", "plugins": [], "world_size": 1})
    append(journal, {"event": "task_begin", "task": 0, "name": "task0", "steps": 1000000,
                     "batch_size": 64, "global_step": 0})
    server, url = browser_test.start_server(args, runs)
    driver = browser_test.make_driver()
    progress, evaluation = [], []
    try:
        driver.get(url + "#/run/live")
        browser_test.wait(driver, 30, lambda d: browser_test.status_of(d) == "running", "the page")
        driver.execute_script(OBSERVER)
        for i in range(1, args.events + 1):
            written = append(journal, {"event": "progress", "task": 0, "step": i, "global_step": i,
                                       "loss": 1.0 / i, "penalty": 0.0, "batch_size": 64,
                                       "micro_batch": 64, "samples_per_second": 1000.0})
            time.sleep(0.3)
            seen = driver.execute_script("return window.__seen['p' + arguments[0]]", str(i))
            if seen:
                progress.append(seen - written * 1000.0)
        for i in range(min(args.events, 20)):
            written = append(journal, {"event": "evaluation", "after_task": i,
                                       "row": [0.9] * args.events})
            time.sleep(0.3)
            seen = driver.execute_script("return window.__seen['c' + arguments[0]]",
                                         (i + 1) * args.events)
            if seen:
                evaluation.append(seen - written * 1000.0)
    finally:
        driver.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(runs, ignore_errors=True)
    result = {
        "benchmark": "bench_web_latency",
        "what": "event appended to events.jsonl -> visible in chromium's DOM (wall clock, ms)",
        "progress_events": len(progress),
        "progress_median_ms": statistics.median(progress) if progress else None,
        "progress_max_ms": max(progress) if progress else None,
        "evaluation_events": len(evaluation),
        "evaluation_median_ms": statistics.median(evaluation) if evaluation else None,
        "evaluation_max_ms": max(evaluation) if evaluation else None,
        "heatmap_cells": args.events * args.events,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
