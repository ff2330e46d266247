"""`piddm demo`: the whole pipeline on an embedded default, with a report and figures.

solve (Firedrake) -> dataset -> teacher -> pairs -> student -> `piddm compare` of every method on
the teacher (sampling and the three tasks, residuals from the torch operator and Firedrake) ->
demo_out/report.md with tables and PNG figures. Every
stage skips what is already on disk, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

from piddm_fem.interrupt import write_atomic

out = Console(soft_wrap=True)

# The embedded default: the first registered problem (solvers/__init__.py: Darcy flow) at S = 33.
DEFAULT = {"res": 33, "n_samples": 1000, "seed": 0,
           "teacher_steps": 1000, "teacher_size": "tiny", "teacher_batch": 32,
           "heun_steps": 18, "pairs": 256, "distill_steps": 1000, "lambda_train": 2e-2,
           "distill_lr": 1.5e-3, "ema_decay": 0.999,
           "n_eval": 64, "refine_steps": 40, "lambda_infer": 1e-2,
           "task_problems": 8, "restarts": 4, "task_steps": 100,
           "guidance_steps": 50, "fno_seconds": 60.0}
DEMO_BUDGET = ("n_eval", "heun_steps", "refine_steps", "lambda_infer", "task_problems", "restarts",
               "task_steps", "guidance_steps", "fno_seconds")  # the evaluation settings above (piddm_fem.evaluation.Budget)
QUICK = {**DEFAULT, "res": 17, "n_samples": 40, "teacher_steps": 20, "heun_steps": 4, "pairs": 16,
         "distill_steps": 10, "n_eval": 8, "refine_steps": 3, "task_problems": 2, "restarts": 2,
         "task_steps": 3, "guidance_steps": 4, "fno_seconds": 1.0}


def demo(out_dir: Path = typer.Option(Path("demo_out"), "--out", help="Output directory."),
         quick: bool = typer.Option(False, "--quick", help="A seconds-long smoke run of every stage."),
         device: str = typer.Option("auto", "--device")):
    """Run the embedded default end to end and write OUT/report.md with figures."""
    import os

    import torch

    from piddm_fem import checks

    cfg = QUICK if quick else DEFAULT
    checks.output_dir(out_dir)
    torch.set_num_threads(os.cpu_count() or 1)  # the learning stages use every core (OMP is 1 for PETSc)
    timings_path = out_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def stage(name, done: Path, fn):
        if done.exists():
            out.print(f"[dim]{name}: {done} exists, skipped")
            return
        out.rule(name)
        t0 = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - t0
        write_atomic(timings_path, json.dumps(timings, indent=1))

    data = out_dir / "data.h5"
    teacher_dir, student_dir = out_dir / "teacher", out_dir / "student"
    stage("generate", data, lambda: _generate(cfg, data))
    stage("teacher", teacher_dir / "done", lambda: _teacher(cfg, data, teacher_dir, device))
    stage("distill", student_dir / "done", lambda: _distill(cfg, data, teacher_dir, student_dir, device))
    from piddm_fem.student import PHYSICS_START

    ablation_dir = student_dir / PHYSICS_START  # lambda = 0: the same run before the penalty starts
    stage("compare", out_dir / "compare.json",
          lambda: _compare(cfg, data, teacher_dir, student_dir, ablation_dir, out_dir, device, quick))
    from piddm_fem.report import write_report

    write_report(out_dir, cfg, json.loads((out_dir / "compare.json").read_text()), timings)
    out.print(f"[bold green]report: {out_dir / 'report.md'}")


def _generate(cfg, data):
    from piddm_fem.solvers import get_problem, problem_names
    from piddm_fem.solvers.generate import generate

    partial = data.with_name(data.name + ".partial")
    generate(get_problem(problem_names()[0]), cfg["n_samples"], cfg["res"], cfg["seed"], data,
             resume=partial.exists())


def _teacher(cfg, data, teacher_dir, device):
    from piddm_fem.teacher import train_teacher

    stats = train_teacher(data, teacher_dir, steps=cfg["teacher_steps"], batch=cfg["teacher_batch"],
                          size=cfg["teacher_size"], device=device,
                          resume=(teacher_dir / "last.pt").exists(),
                          val_every=max(1, cfg["teacher_steps"] // 6))
    if stats["interrupted"]:
        raise KeyboardInterrupt
    write_atomic(teacher_dir / "done", json.dumps(stats))


def _distill(cfg, data, teacher_dir, student_dir, device):
    """``late_physics``: the penalty after the regression is learned; physics_start.pt is the
    lambda = 0 ablation. The learning rate with an EMA of the weights halves the steps that 2e-4
    without one needed for the same report (docs/results.md, issue 12, eighth session)."""
    from piddm_fem.student import distill_late_physics

    distill_late_physics(teacher_dir, data, student_dir, cfg["distill_steps"], cfg["lambda_train"], device,
                         pairs=cfg["pairs"], teacher_steps=cfg["heun_steps"], lr=cfg["distill_lr"],
                         ema_decay=cfg["ema_decay"])


def _compare(cfg, data, teacher_dir, student_dir, ablation_dir, out_dir, device, quick):
    """Every method of piddm_fem.baselines on the demo's teacher (`piddm compare`), with
    Firedrake's residual beside the torch operator's."""
    from piddm_fem.evaluation import compare, load_setup, make_budget
    from piddm_fem.report import write_compare

    students = {"PIDDM": student_dir, "lambda=0": ablation_dir}
    budget = make_budget(teacher_dir, quick, **{k: cfg[k] for k in DEMO_BUDGET})
    setup = load_setup(data, teacher_dir, students, budget, device, out_dir)
    write_compare(out_dir, compare(setup, None, [cfg["seed"]], fem=True))
