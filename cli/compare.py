"""`piddm compare`: every method on one teacher (piddm_fem/evaluation.py), tables and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

out = Console(soft_wrap=True)


def split_list(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def compare(ctx: typer.Context,
            data: Path = typer.Argument(..., help="The dataset the teacher was trained on (with its operator)."),
            teacher: Path = typer.Option(..., "--teacher", help="Teacher run directory or checkpoint."),
            student: Optional[Path] = typer.Option(None, "--student", help="PIDDM student (lambda_train > 0)."),
            ablation: Optional[Path] = typer.Option(None, "--ablation", help="The lambda_train = 0 student (a run or a checkpoint, e.g. a --delay run's physics_start.pt)."),
            methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated names \\[all that the given runs allow]."),
            tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks \\[every task of the problem's metadata]."),
            seeds: list[int] = typer.Option([0, 1, 2], "--seeds", min=0, help="Seeds: --seeds 0 1 2 (or repeated)."),
            out_dir: Path = typer.Option(..., "--out", help="Output directory."),
            quick: bool = typer.Option(False, "--quick", help="Tiny budgets: a seconds-long smoke run."),
            guidance_steps: Optional[int] = typer.Option(None, "--guidance-steps", help="Steps of the guided samplers [200]."),
            fno_seconds: Optional[float] = typer.Option(None, "--fno-seconds", help="FNO training budget \\[the teacher's, else 60]."),
            n_eval: Optional[int] = typer.Option(None, "--n-eval", help="Samples per method and seed."),
            task_problems: Optional[int] = typer.Option(None, "--task-problems", help="Test problems per task."),
            task_samples: Optional[int] = typer.Option(None, "--task-samples", help="Samples averaged per task estimate, the same for every method with noise \\[PIDDM: its restarts, 4; the others: 1]."),
            fem: bool = typer.Option(False, "--fem", help="Also Firedrake's assembled residual (needs Firedrake)."),
            device: str = typer.Option("auto", "--device")):
    """Compare PIDDM with the teacher, DiffusionPDE/DPS guidance, PIDM, ECI, direct optimisation
    and an FNO on the same teacher; writes OUT/compare.json, OUT/compare.md and figures."""
    from piddm_fem import checks
    from piddm_fem.evaluation import compare as run_compare, load_setup, make_budget
    from piddm_fem.errors import PiddmError
    from piddm_fem.report import write_compare

    extra = [a for a in ctx.args if not (a.isascii() and a.isdigit())]
    if extra:
        raise PiddmError(f"unexpected argument {extra[0]!r}; options are listed by `piddm compare --help`")
    seeds = list(seeds) + [int(a) for a in ctx.args]  # --seeds 0 1 2: the later seeds arrive as extra arguments
    students = {k: v for k, v in (("PIDDM", student), ("lambda=0", ablation)) if v is not None}
    budget = make_budget(teacher, quick, guidance_steps=guidance_steps, fno_seconds=fno_seconds,
                         n_eval=n_eval, task_problems=task_problems, task_samples=task_samples)
    checks.output_dir(out_dir)
    setup = load_setup(data, teacher, students, budget, device, out_dir)
    doc = run_compare(setup, split_list(methods), list(seeds), split_list(tasks), fem=fem)
    paths = write_compare(out_dir, doc)
    for m in doc["methods"]:
        s = m.get("sample")
        msg = f"{m['method']}: NFE {m['nfe']}"
        if s:
            msg += f", residual {s['residual']['mean']:.3g}, {1e3 * s['seconds_per_sample']['mean']:.2f} ms/sample"
        for task, errs in m.get("tasks", {}).items():
            msg += f"; {task} " + " ".join(f"{k} {v['mean']:.3g}" for k, v in errs.items() if k.startswith("rel_l2_"))
        out.print(msg)
    out.print(f"wrote {paths['json']} and {paths['md']}")
