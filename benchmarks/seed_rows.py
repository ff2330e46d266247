"""Tables and a figure from the per-seed rows of a comparison, finished or cut (a GPU lease that
ran out): OUT/rows_seed<k>.json as `piddm compare` and benchmarks/piddm_pipeline.py save them,
method by method. Each method is summarised over the seeds that finished it: median [min, max],
each sample ratio taken per seed against that seed's teacher.
    python benchmarks/seed_rows.py RUN_DIR [--figure tradeoff.png --title "Darcy S = 64, H200"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from piddm_fem.errors import script_main
from piddm_fem.evaluation import _aggregate
from piddm_fem.report import tradeoff_figure


def spread(values, fmt: str, n_seeds: int) -> str:
    """median [min, max] of ``values``, with the seed count when fewer than ``n_seeds``."""
    if not values:
        return "-"
    med = fmt.format(float(np.median(values)))
    text = med if len(values) == 1 else f"{med} [{fmt.format(min(values))}, {fmt.format(max(values))}]"
    return text if len(values) == n_seeds else f"{text} ({len(values)} of {n_seeds} seeds)"


def sample_table(runs: list[dict], methods: list[str]) -> list[str]:
    teacher = [r["teacher"]["sample"] for r in runs if "sample" in r.get("teacher", {})]
    if not teacher:  # the ratios are to the teacher's samples
        return []
    channels = sorted(teacher[0]["mmse"])
    ratios = [f"{k} {c}" for k in ("MMSE", "SMSE") for c in channels]  # the dataset's channels, e.g. a u or f u
    lines = ["| method | median residual | x teacher | " + " | ".join(ratios) + " | copy ratio | ms/sample |",
             "|---|---|---|" + "---|" * (len(ratios) + 2)]
    for m in methods:
        pairs = [(r[m]["sample"], r["teacher"]["sample"]) for r in runs if "sample" in r.get(m, {})]
        if not pairs:
            continue
        cols = [spread([s["residual"]["median"] for s, _ in pairs], "{:.3g}", len(runs)),
                spread([s["residual"]["median"] / t["residual"]["median"] for s, t in pairs], "{:.3f}", len(runs))]
        cols += [spread([s[k][c] / t[k][c] for s, t in pairs], "{:.2f}", len(runs))
                 for k in ("mmse", "smse") for c in channels]
        cols.append(spread([s["copy_ratio"] for s, _ in pairs if "copy_ratio" in s], "{:.2f}", len(runs)))
        cols.append(spread([1e3 * s["seconds_per_sample"] for s, _ in pairs], "{:.2f}", len(runs)))
        lines.append(f"| {m} | " + " | ".join(cols) + " |")
    return lines


def task_table(runs: list[dict], methods: list[str]) -> list[str]:
    tasks = sorted({t for r in runs for row in r.values() for t in row.get("tasks", {})})
    keys = {t: sorted({k for r in runs for row in r.values() for k in row.get("tasks", {}).get(t, {})
                       if k not in ("residual", "seconds_per_problem")}) for t in tasks}
    lines = ["| method | samples | " + " | ".join(f"{t} {k.replace('_', ' ')}" for t in tasks for k in keys[t])
             + " | s/problem (mean over tasks) |", "|---|---|" + "---|" * (sum(map(len, keys.values())) + 1)]
    n = len(runs)
    for m in methods:
        got = [r[m]["tasks"] for r in runs if r.get(m, {}).get("tasks")]
        if not got:
            continue
        cols = [spread([g[t][k] for g in got if k in g.get(t, {})], "{:.3g}", n) for t in tasks for k in keys[t]]
        cols.append(spread([float(np.mean([g[t]["seconds_per_problem"] for t in g])) for g in got], "{:.3g}", n))
        samples = next((r[m]["task_samples"] for r in runs if "task_samples" in r.get(m, {})), "?")  # "?": rows saved before it
        lines.append(f"| {m} | {samples} | " + " | ".join(cols) + " |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the folder holding rows_seed<k>.json")
    p.add_argument("--figure", type=Path, help="write error against time (tradeoff_figure) here")
    p.add_argument("--title", default="error against time")
    args = p.parse_args(argv)
    files = sorted(args.run.glob("rows_seed*.json"))
    if not files:
        raise SystemExit(f"error: no rows_seed<k>.json in {args.run}; give the comparison's output folder")
    runs = [json.loads(f.read_text())["rows"] for f in files]
    methods = list(dict.fromkeys(m for r in runs for m in r))
    print("\n".join(sample_table(runs, methods) + [""] + task_table(runs, methods)))
    if args.figure:
        rows = []
        for m in methods:
            per = [r[m] for r in runs if m in r]
            rows.append({"method": m, **{k: _aggregate([p[k] for p in per if p.get(k)])
                                         for k in ("sample", "tasks") if any(p.get(k) for p in per)}})
        tasks = sorted({t for row in rows for t in row.get("tasks", {})})
        print(tradeoff_figure([{"methods": rows, "tasks": tasks}], args.figure, args.title))


if __name__ == "__main__":
    script_main(main)
