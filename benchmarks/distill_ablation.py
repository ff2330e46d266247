"""Distillation ablation on one teacher (issue 12): distil each variant from the same pair bank,
sample 64 one-step (or k-step) samples and compare with the teacher's samples and the test split:
median relative weak-form residual, MMSE and SMSE per channel. Appends one JSON line per variant
to OUT/results.jsonl (finished variants are skipped on a rerun). torch only.

    python benchmarks/distill_ablation.py --data data.h5 --teacher teacher --teacher-samples t.h5 \
        --pairs-from demo_out/student --out runs/ablation \
        '[{"name": "l2_1e-2", "lambda_train": 0.01, "ramp_steps": 62},
          {"name": "k4", "lambda_train": 0.01, "ramp_steps": 62, "k_steps": 4}]'

Each variant is a dict of DistillConfig fields plus "name" and "steps" (default 250). OUT/tradeoff.png
plots every row's residual against its worst channel's SMSE, both as multiples of the teacher's,
with the goal region (SMSE <= 2x, residual <= --goal-residual x); '[]' only redraws it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from piddm_fem import checkpoint, metrics, schema
from piddm_fem.errors import script_main
from piddm_fem.figures import plot_points
from piddm_fem.residual import ResidualOperator
from piddm_fem.student import distill, sample_student, share_pair_bank
from piddm_fem.teacher import dataset_splits


def plot_tradeoff(results: Path, path: Path, goal_residual: float) -> Path:
    """Residual against the worst channel's SMSE, both over the teacher's, one point per row."""
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    teacher = next(r for r in rows if r["name"] == "teacher")
    points = {r["name"]: (max(s / t for s, t in zip(r["smse"], teacher["smse"])), r["residual"] / teacher["residual"])
              for r in rows}
    return plot_points(points, path, "SMSE of the worst channel / teacher's", "median relative residual / teacher's",
                       title=f"distillation trade-off ({len(rows) - 1} students, one teacher)",
                       goal=(2.0, goal_residual), goal_label=f"goal: SMSE <= 2x, residual <= {goal_residual}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", help="JSON list of variants")
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--teacher-samples", required=True, help="the teacher's samples (piddm teacher sample)")
    p.add_argument("--pairs-from", help="a student run whose pair bank every variant starts from")
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", required=True)
    p.add_argument("--goal-residual", type=float, default=0.5, help="issue 12: 0.5 (CPU demo), 0.3 (GPU)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, splits = dataset_splits(checkpoint.load(args.teacher, kind="teacher"), args.data)
    _, reference, _ = schema.read(args.data, splits["test"])
    operator = ResidualOperator.from_file(args.data)

    def evaluate(fields) -> dict:
        mmse, smse = metrics.mmse_smse(fields, reference)
        return {"residual": float(np.median(metrics.residual(operator, fields))), "mmse": mmse.tolist(),
                "smse": smse.tolist()}

    results = out / "results.jsonl"
    done = {json.loads(line)["name"] for line in results.read_text().splitlines()} if results.exists() else set()
    if "teacher" not in done:
        with open(results, "a") as f:
            f.write(json.dumps({"name": "teacher", **evaluate(schema.read(args.teacher_samples)[1][:args.n])}) + "\n")
    for variant in json.loads(args.variants):
        name, steps = variant.pop("name"), variant.pop("steps", 250)
        if name in done:
            continue
        run = out / name
        every = {"val_every": max(1, steps // 4), "refresh": max(1, steps // 4)}  # unless the variant says
        settings = {"pairs": args.pairs, **every, **variant}
        if args.pairs_from:
            share_pair_bank(args.pairs_from, run, **settings)
        t0 = time.perf_counter()
        distill(args.teacher, args.data, run, steps, progress=False,
                resume=(run / checkpoint.LAST).exists(), **settings)
        fields = sample_student(run, args.n, 0)["fields"]
        with open(results, "a") as f:
            f.write(json.dumps({"name": name, **variant, "steps": steps, "seconds": time.perf_counter() - t0,
                                **evaluate(fields)}) + "\n")
        print(f"{name}: done", flush=True)
    print(f"trade-off: {plot_tradeoff(results, out / 'tradeoff.png', args.goal_residual)}")


if __name__ == "__main__":
    script_main(main)
