"""The pipeline at demo scale: the one recipe that `piddm demo` and examples/quickstart.py run.

solve (Firedrake) -> dataset -> teacher -> pairs -> student (``student.late_physics``) ->
`piddm compare` of every method on the teacher -> OUT/report.md. ``run_demo`` skips every stage
already on disk, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from piddm_fem.checkpoint import DONE, LAST
from piddm_fem.edm import HEUN_STEPS
from piddm_fem.errors import PiddmError
from piddm_fem.interrupt import write_atomic
from piddm_fem.tasks import LAMBDA_INFER, RESTARTS

# The embedded default: the first registered problem (solvers/__init__.py: Darcy flow) at S = 33.
DEMO = {"res": 33, "n_samples": 1000, "seed": 0,
        "teacher_steps": 1000, "teacher_size": "tiny", "teacher_batch": 32,
        "heun_steps": HEUN_STEPS, "pairs": 256, "distill_steps": 1000, "lambda_train": 2e-2,
        "distill_lr": 1.5e-3, "ema_decay": 0.999,
        "n_eval": 64, "refine_steps": 40, "lambda_infer": LAMBDA_INFER,
        "task_problems": 8, "restarts": RESTARTS, "task_steps": 100,
        "guidance_steps": 50, "fno_seconds": 60.0}
DEMO_BUDGET = ("n_eval", "heun_steps", "refine_steps", "lambda_infer", "task_problems", "restarts",
               "task_steps", "guidance_steps", "fno_seconds")  # the evaluation settings above (piddm_fem.evaluation.Budget)
QUICK = {**DEMO, "res": 17, "n_samples": 40, "teacher_steps": 20, "heun_steps": 4, "pairs": 16,
         "distill_steps": 10, "n_eval": 8, "refine_steps": 3, "task_problems": 2, "restarts": 2,
         "task_steps": 3, "guidance_steps": 4, "fno_seconds": 1.0}


def generate_data(cfg: dict, problem: str, data, progress: bool = True) -> None:
    """``cfg["n_samples"]`` Firedrake solves of ``problem`` at ``cfg["res"]`` (resumed from an
    interrupted run's partial file)."""
    from piddm_fem import schema
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.generate import generate

    generate(get_problem(problem), cfg["n_samples"], cfg["res"], cfg["seed"], data,
             resume=schema.partial_path(data).exists(), show_progress=progress)


def train_teacher_stage(cfg: dict, data, teacher_dir, device, progress: bool = True) -> dict:
    """The teacher of the recipe (resumed from TEACHER/last.pt); TEACHER/done when finished."""
    from piddm_fem.teacher import train_teacher

    teacher_dir = Path(teacher_dir)
    stats = train_teacher(data, teacher_dir, steps=cfg["teacher_steps"], batch=cfg["teacher_batch"],
                          size=cfg["teacher_size"], device=device, progress=progress,
                          resume=(teacher_dir / LAST).exists(),
                          val_every=max(1, cfg["teacher_steps"] // 6))
    if stats["interrupted"]:
        raise KeyboardInterrupt
    write_atomic(teacher_dir / DONE, json.dumps(stats))
    return stats


def distill_stage(cfg: dict, data, teacher_dir, student_dir, device, progress: bool = True) -> dict:
    """``late_physics``: the penalty after the regression is learned; STUDENT/physics_start.pt is
    the lambda = 0 ablation. The learning rate with an EMA of the weights halves the steps that
    2e-4 without one needed for the same report (docs/results.md, issue 12, eighth session)."""
    from piddm_fem.student import distill_late_physics

    return distill_late_physics(teacher_dir, data, student_dir, cfg["distill_steps"], cfg["lambda_train"], device,
                                pairs=cfg["pairs"], teacher_steps=cfg["heun_steps"], lr=cfg["distill_lr"],
                                ema_decay=cfg["ema_decay"], progress=progress)


def claim_folder(out_dir: Path, cfg: dict) -> None:
    """Record the recipe ``cfg`` (``DEMO`` or ``QUICK``) in OUT/recipe.json, refusing a folder
    made with another one: the stages skip what exists, so one folder holds one recipe."""
    made_with = Path(out_dir) / "recipe.json"
    if made_with.exists() and json.loads(made_with.read_text()) != json.loads(json.dumps(cfg)):
        raise PiddmError(f"{out_dir} holds a run made with other settings ({made_with}); pass another "
                         f"--out, or {'drop' if cfg is QUICK else 'add'} --quick to continue that run")
    write_atomic(made_with, json.dumps(cfg, indent=1))


def run_demo(out_dir, quick: bool = False, device: str = "auto", console: Console | None = None) -> Path:
    """The whole recipe (``QUICK``: a seconds-long smoke run) into ``out_dir``; returns the report."""
    import os

    import torch

    from piddm_fem import checks

    console = console or Console(soft_wrap=True)
    cfg = QUICK if quick else DEMO
    out_dir = checks.output_dir(out_dir)
    claim_folder(out_dir, cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the learning stages use every core (OMP is 1 for PETSc)
    try:
        return _stages(cfg, out_dir, quick, device, console)
    finally:
        torch.set_num_threads(threads)


def _stages(cfg: dict, out_dir: Path, quick: bool, device: str, console: Console) -> Path:
    """``run_demo``'s stages, each skipped where its output exists; returns the report."""
    from piddm_fem.report import write_report
    from piddm_fem.solvers import problem_names
    from piddm_fem.student import PHYSICS_START

    timings_path = out_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def stage(name, done: Path, fn):
        if done.exists():
            console.print(f"[dim]{name}: {done} exists, skipped")
            return
        console.rule(name)
        t0 = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - t0
        write_atomic(timings_path, json.dumps(timings, indent=1))

    data = out_dir / "data.h5"
    teacher_dir, student_dir = out_dir / "teacher", out_dir / "student"
    stage("generate", data, lambda: generate_data(cfg, problem_names()[0], data))
    stage("teacher", teacher_dir / DONE, lambda: train_teacher_stage(cfg, data, teacher_dir, device))
    stage("distill", student_dir / DONE, lambda: distill_stage(cfg, data, teacher_dir, student_dir, device))
    ablation_dir = student_dir / PHYSICS_START  # lambda = 0: the same run before the penalty starts
    stage("compare", out_dir / "compare.json",
          lambda: _compare(cfg, data, teacher_dir, {"PIDDM": student_dir, "lambda=0": ablation_dir},
                           out_dir, device, quick))
    return write_report(out_dir, cfg, json.loads((out_dir / "compare.json").read_text()), timings)


def _compare(cfg, data, teacher_dir, students, out_dir, device, quick):
    """Every method of piddm_fem.baselines on the demo's teacher (`piddm compare`), with
    Firedrake's residual beside the torch operator's."""
    from piddm_fem.evaluation import compare, load_setup, make_budget
    from piddm_fem.report import write_compare

    budget = make_budget(teacher_dir, quick, **{k: cfg[k] for k in DEMO_BUDGET})
    setup = load_setup(data, teacher_dir, students, budget, device, out_dir)
    write_compare(out_dir, compare(setup, None, [cfg["seed"]], fem=True))
