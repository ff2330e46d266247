"""The PIDDM measurement run: (optionally) train a teacher on a time budget, then for each seed
distil a PIDDM student (lambda_train > 0) and its lambda_train = 0 ablation from the same pair bank,
and evaluate teacher, PIDDM-1, PIDDM-ref and the ablation on held-out data, with the three tasks.
Prints the median and spread over seeds and writes OUT/summary.json. torch only unless --fem.

    python benchmarks/piddm_pipeline.py --data darcy33.h5 --teacher teacher_dir --out runs/piddm \
        --seeds 0 1 2 --distill-steps 400 [--fem]
    python benchmarks/piddm_pipeline.py --data darcy64.h5 --train-teacher-seconds 240 --size small ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from piddm_fem.cli.evaluation import evaluate
from piddm_fem.student import distill, share_pair_bank
from piddm_fem.teacher import train_teacher


def train_on_budget(data, out, seconds: float, size: str, batch: int, device: str) -> dict:
    """Train a teacher for about ``seconds``: a short run measures the rate, a resume fills the rest."""
    t0 = time.perf_counter()
    probe = train_teacher(data, out, steps=50, batch=batch, size=size, device=device, progress=False,
                          val_every=50, warmup=200)
    rate = 50 / (time.perf_counter() - t0)
    steps = max(100, int(rate * seconds))
    stats = train_teacher(data, out, steps=steps, device=device, resume=True, progress=False,
                          val_every=max(100, steps // 8))
    return {**stats, "probe_rate": rate, "wall": time.perf_counter() - t0, "probe": probe["loss"]}


def aggregate(runs: list[dict]) -> dict:
    """Median and (min, max) over seeds of each method's and task's headline numbers."""
    def spread(values):
        v = np.asarray(values, float)
        return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}

    out = {"methods": {}, "tasks": {}}
    for k, m in enumerate(runs[0]["methods"]):
        rows = [r["methods"][k] for r in runs]
        key = "residual_fem" if m["residual_fem"] else "residual_torch"
        out["methods"][m["method"]] = {
            "residual": spread([r[key]["median"] for r in rows]),
            **{f"mmse_{c}": spread([r["mmse"][c] for r in rows]) for c in m["mmse"]},
            **{f"smse_{c}": spread([r["smse"][c] for r in rows]) for c in m["smse"]},
            "ms_per_sample": spread([1e3 * r["seconds_per_sample"] for r in rows]),
            **({"fraction_a_high": spread([r["fraction_a_high"] for r in rows])} if "fraction_a_high" in m else {})}
    for task, errs in runs[0]["tasks"].items():
        out["tasks"][task] = {k: spread([r["tasks"][task][k]["median"] for r in runs])
                              for k in errs if k != "seconds"}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--teacher", help="existing teacher directory (else one is trained into OUT/teacher)")
    p.add_argument("--train-teacher-seconds", type=float, default=0)
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--distill-batch", type=int, default=32)
    p.add_argument("--lambda-train", type=float, default=1e-2)
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--heun-steps", type=int, default=18)
    p.add_argument("--n-eval", type=int, default=128)
    p.add_argument("--refine-steps", type=int, default=40)
    p.add_argument("--lambda-infer", type=float, default=1e-2)
    p.add_argument("--task-problems", type=int, default=8)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--task-steps", type=int, default=150)
    p.add_argument("--task-lambda", type=float, default=1e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--fem", action="store_true", help="also report Firedrake's residual (needs Firedrake)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args)}
    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.teacher:
        report["teacher_training"] = train_on_budget(args.data, teacher, args.train_teacher_seconds,
                                                     args.size, args.batch, args.device)
        print("teacher:", json.dumps(report["teacher_training"]), flush=True)
    runs = []
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        students = {"PIDDM-1": run_dir / "student", "lambda=0": run_dir / "student_lambda0"}
        costs = {}
        for name, lam in (("PIDDM-1", args.lambda_train), ("lambda=0", 0.0)):
            d = students[name]
            if name == "lambda=0":
                share_pair_bank(students["PIDDM-1"], d)
            t0 = time.perf_counter()
            stats = distill(teacher, args.data, d, args.distill_steps, device=args.device, progress=False,
                            lambda_train=lam, seed=seed, pairs=args.pairs, teacher_steps=args.heun_steps,
                            batch=args.distill_batch, ramp_steps=args.distill_steps // 4,
                            refresh=max(1, args.distill_steps // 4), val_every=max(1, args.distill_steps // 4))
            costs[name] = {"wall": time.perf_counter() - t0, "distill_seconds": stats["seconds"],
                           "pair_seconds": stats["pair_seconds"]}
        res = evaluate(args.data, teacher, students, run_dir, n_eval=args.n_eval, heun_steps=args.heun_steps,
                       refine_steps=args.refine_steps, lambda_infer=args.lambda_infer,
                       task_problems=args.task_problems, restarts=args.restarts, task_steps=args.task_steps,
                       task_lambda=args.task_lambda, seed=seed, device=args.device, fem=args.fem)
        res["costs"] = costs
        runs.append(res)
        (run_dir / "results.json").write_text(json.dumps(res, indent=1))
        print(f"seed {seed}: " + "; ".join(
            f"{m['method']}: R={(m['residual_fem'] or m['residual_torch'])['median']:.3g} "
            f"{1e3 * m['seconds_per_sample']:.2f} ms" for m in res["methods"]), flush=True)
    report["runs"] = runs
    report["summary"] = aggregate(runs)
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
