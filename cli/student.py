"""`piddm distill`, `piddm sample` and `piddm infer`: the PIDDM student and its tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from piddm_fem.errors import PiddmError

out = Console(soft_wrap=True)


def distill(teacher_dir: Path = typer.Argument(..., help="Teacher run directory or checkpoint."),
            data: Path = typer.Option(..., "--data", help="The dataset the teacher was trained on."),
            out_dir: Path = typer.Option(..., "--out", help="Student run directory."),
            lambda_train: Optional[float] = typer.Option(None, "--lambda-train", help="Residual weight (0: pure distillation)."),
            ramp: Optional[int] = typer.Option(None, "--ramp", help="Steps over which lambda rises from 0."),
            pairs: Optional[int] = typer.Option(None, "--pairs", help="Pairs in the bank."),
            teacher_steps: Optional[int] = typer.Option(None, "--teacher-steps", help="Heun steps N_s of the teacher."),
            refresh: Optional[int] = typer.Option(None, "--refresh", help="Refresh part of the bank every K steps (0: never)."),
            steps: int = typer.Option(2000, "--steps", help="Total optimisation steps."),
            batch: Optional[int] = typer.Option(None, "--batch"),
            lr: Optional[float] = typer.Option(None, "--lr"),
            seed: Optional[int] = typer.Option(None, "--seed"),
            device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
            resume: bool = typer.Option(False, "--resume", help="Continue OUT/last.pt.")):
    """Distil a teacher into a one-step student with the weak-form residual penalty."""
    from piddm_fem.student import distill as run_distill

    stats = run_distill(teacher_dir, data, out_dir, steps, device=device, resume=resume,
                        lambda_train=lambda_train, ramp_steps=ramp, pairs=pairs,
                        teacher_steps=teacher_steps, refresh=refresh, batch=batch, lr=lr, seed=seed)
    if stats["interrupted"]:
        raise KeyboardInterrupt
    out.print(f"student at step {stats['step']} in {out_dir}: val regression "
              f"{stats.get('val_regression', float('nan')):.3e}, residual {stats.get('val_residual', float('nan')):.3e}; "
              f"distillation {stats['seconds']:.0f}s, teacher pairs {stats['pair_seconds']:.0f}s")


def sample(student_dir: Path = typer.Argument(..., help="Student run directory or checkpoint."),
           n: int = typer.Option(64, "--n"), seed: int = typer.Option(0, "--seed"),
           refine_steps: int = typer.Option(0, "--refine", help="PIDDM-ref: Adam steps on eps (0: PIDDM-1)."),
           lambda_infer: float = typer.Option(1e-2, "--lambda-infer", help="Residual weight of refinement."),
           out_path: Path = typer.Option(..., "--out"), batch: int = typer.Option(256, "--batch"),
           device: str = typer.Option("auto", "--device"),
           overwrite: bool = typer.Option(False, "--overwrite")):
    """One-step samples (optionally refined), written in the dataset schema."""
    from piddm_fem.student import sample_student

    stats = sample_student(student_dir, n, seed, refine_steps, lambda_infer, out_path, device, batch,
                           overwrite)
    msg = (f"wrote {n} samples to {out_path} ({1e3 * stats['seconds_per_sample']:.2f} ms/sample); "
           f"median relative residual {np.median(stats['residual_before']):.3e}")
    if refine_steps:
        msg += f" -> {np.median(stats['residual_after']):.3e} after {refine_steps} refinement steps"
    out.print(msg)


def infer(student_dir: Path = typer.Argument(..., help="Student run directory or checkpoint."),
          task: str = typer.Option(..., "--task", help="forward | inverse | reconstruct"),
          data: Path = typer.Option(..., "--data", help="Dataset with the ground truth."),
          index: list[int] = typer.Option(..., "--index", help="Sample indices (repeatable)."),
          points: Optional[int] = typer.Option(None, "--points", help="Observed u nodes (inverse)."),
          fraction: Optional[float] = typer.Option(None, "--fraction", help="Observed fraction (reconstruct)."),
          steps: int = typer.Option(200, "--steps"), lam: float = typer.Option(1e-3, "--lambda"),
          restarts: int = typer.Option(4, "--restarts", help="eps restarts per problem (ensemble)."),
          seed: int = typer.Option(0, "--seed"), out_path: Path = typer.Option(..., "--out"),
          device: str = typer.Option("auto", "--device"),
          overwrite: bool = typer.Option(False, "--overwrite")):
    """Forward, inverse or reconstruction by masked latent optimisation; writes mean, std, errors."""
    from piddm_fem import checkpoint, checks, schema
    from piddm_fem.student import load_student
    from piddm_fem.tasks import solve_task
    from piddm_fem.teacher import resolve_device

    checks.output_file(out_path, overwrite)
    checks.check_range("--lambda", lam, "[0, inf)")
    dev = resolve_device(device)
    student, ckpt, normalizer, operator = load_student(student_dir, dev)
    info, truth, status = schema.read(data, index)
    checkpoint.check_compatible(ckpt, info, data)
    if (status != schema.STATUS_OK).any():
        raise PiddmError(f"{data}: samples {list(np.asarray(index)[status != 1])} have no solution; pick ok samples")
    result = solve_task(student, normalizer, operator, ckpt, task, truth, points=points,
                        fraction=fraction, steps=steps, lam=lam, restarts=restarts, seed=seed)
    info.source, info.solver_parameters = f"student-{task}", {
        "task": task, "steps": steps, "lambda": lam, "restarts": restarts, "indices": list(index)}
    schema.write(out_path, info, result["mean"], overwrite=overwrite,
                 extra={"std": result["std"], "mask": result["mask"], "truth": truth,
                        **{f"errors/{k}": v for k, v in result["errors"].items()}})
    summary = ", ".join(f"{k} {np.median(v):.3e}" for k, v in result["errors"].items())
    out.print(f"{task}: {len(index)} problems x {restarts} restarts in {result['seconds']:.1f}s; "
              f"median {summary}; wrote {out_path}")
