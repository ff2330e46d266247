"""The comparison from a dataset alone (torch only unless --fem): train a teacher on a time budget
(or take --teacher), distil the PIDDM student with the demo's schedule (`student.late_physics`:
its step at half-way, before the penalty, is the lambda_train = 0 ablation), then `piddm compare`
every method on that teacher over the seeds: OUT/compare.json, compare.md and figures. This is the
GPU protocol (benchmarks/gpu_session.sh) and runs as well on the CPU.

    python benchmarks/piddm_pipeline.py --data darcy64.h5 --out runs/d64 --train-teacher-seconds 150 \
        --size small --seeds 0 1 2 --distill-steps 500 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from piddm_fem import checkpoint
from piddm_fem.errors import script_main
from piddm_fem.evaluation import compare, load_setup, make_budget
from piddm_fem.report import write_compare
from piddm_fem.student import PHYSICS_START, distill_late_physics
from piddm_fem.teacher import train_teacher

def train_on_budget(data, out, seconds: float, size: str, batch: int, device: str, probe: int = 20) -> dict:
    """Train a teacher for about ``seconds`` of training time: ``probe`` steps warm up first (process
    start-up, allocation, the first slow steps: not counted), then resumed chunks, each sized from
    the rate measured on the one before, until the budget is spent."""
    t0 = time.perf_counter()
    stats = train_teacher(data, out, steps=probe, batch=batch, size=size, device=device, progress=False,
                          val_every=probe, warmup=200)
    warm = time.perf_counter()
    trained, rate, chunk = 0.0, None, probe
    for _ in range(5):
        if trained >= 0.95 * seconds:
            break
        stats = train_teacher(data, out, steps=stats["step"] + chunk, device=device, resume=True,
                              progress=False, val_every=max(100, chunk // 4))
        trained += stats["seconds"]
        rate = chunk / stats["seconds"]
        chunk = max(1, int(rate * (seconds - trained)))
    return {**stats, "trained_seconds": trained, "rate": rate, "startup_seconds": warm - t0,
            "wall": time.perf_counter() - t0}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--teacher", help="existing teacher directory (else one is trained into OUT/teacher)")
    p.add_argument("--train-teacher-seconds", type=float, default=60)
    p.add_argument("--size", default="tiny")
    p.add_argument("--probe-steps", type=int, default=20, help="warm-up steps, then as many to measure the rate")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--distill-batch", type=int, default=32)
    p.add_argument("--lambda-train", type=float, default=2e-2)
    p.add_argument("--distill-lr", type=float, help="the student's Adam learning rate [piddm distill's default]")
    p.add_argument("--distill-ema", type=float, help="sample an EMA of the student's weights with this decay [off]")
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--targets", default="teacher", help="teacher | solved: the student's regression targets")
    p.add_argument("--methods", help="comma-separated (default: all)")
    p.add_argument("--compare-out", help="where compare.json/md and figures go [OUT]")
    p.add_argument("--quick", action="store_true", help="the compare stage on tiny budgets")
    p.add_argument("--guidance-steps", type=int)
    p.add_argument("--n-eval", type=int)
    p.add_argument("--task-problems", type=int)
    p.add_argument("--task-samples", type=int, help="samples averaged per task estimate, every method with noise")
    p.add_argument("--device", default="auto")
    p.add_argument("--fem", action="store_true", help="also report Firedrake's residual (needs Firedrake)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    costs = {}
    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.teacher and not (teacher / checkpoint.BEST).exists():
        costs["teacher"] = train_on_budget(args.data, teacher, args.train_teacher_seconds, args.size, args.batch,
                                           args.device, args.probe_steps)
        print("teacher:", json.dumps(costs["teacher"]), flush=True)
    students = {"PIDDM": out / "student", "lambda=0": out / "student" / PHYSICS_START}
    budget = make_budget(teacher, args.quick, guidance_steps=args.guidance_steps, n_eval=args.n_eval,
                         task_problems=args.task_problems, task_samples=args.task_samples)
    if not (out / "student" / checkpoint.DONE).exists():  # the demo's recipe; lambda = 0 is its first half
        distill_late_physics(teacher, args.data, out / "student", args.distill_steps, args.lambda_train,
                             args.device, progress=False, pairs=args.pairs, teacher_steps=budget.heun_steps,
                             batch=args.distill_batch, targets=args.targets, lr=args.distill_lr,
                             ema_decay=args.distill_ema)
    where = Path(args.compare_out or out)
    setup = load_setup(args.data, teacher, students, budget, args.device, where)
    doc = compare(setup, args.methods.split(",") if args.methods else None, args.seeds, fem=args.fem)
    doc["pipeline"] = {"args": vars(args), "costs": costs}
    write_compare(where, doc)
    print(f"wrote {where / 'compare.json'}", flush=True)
    return doc


if __name__ == "__main__":
    try:
        script_main(main)
    except KeyboardInterrupt:  # the time limit of benchmarks/gpu_session.sh, or Ctrl-C
        sys.exit("stopped: the finished parts are saved; the same command continues from them")
