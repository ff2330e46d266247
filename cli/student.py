"""`piddm distill`, `piddm sample` and `piddm infer`: the PIDDM student and its tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from piddm_fem.errors import PiddmError
from piddm_fem.interrupt import write_atomic

out = Console(soft_wrap=True)


def distill(teacher_dir: Path = typer.Argument(..., help="Teacher run directory or checkpoint."),
            data: Path = typer.Option(..., "--data", help="The dataset the teacher was trained on."),
            out_dir: Path = typer.Option(..., "--out", help="Student run directory."),
            lambda_train: Optional[float] = typer.Option(None, "--lambda-train", help="Residual weight (0: pure distillation)."),
            ramp: Optional[int] = typer.Option(None, "--ramp", help="Steps over which lambda rises from 0."),
            delay: Optional[int] = typer.Option(None, "--delay", help="Steps with lambda = 0 before the ramp; the student at that "
                                                 "step is kept as OUT/physics_start.pt, its lambda = 0 ablation."),
            physics_norm: Optional[str] = typer.Option(None, "--physics-norm", help="l2 (scaled residual) | dual (K0^-1 norm)."),
            physics_scale: Optional[str] = typer.Option(None, "--physics-scale", help="absolute (physical units) | typical "
                                                        "(over a typical load's penalty: one weight for every problem) | "
                                                        "sample (over each sample's own load's)."),
            physics_channels: Optional[str] = typer.Option(None, "--physics-channels",
                                                           help="all | unknown: channels the penalty's gradient reaches."),
            k_steps: Optional[int] = typer.Option(None, "--k-steps", help="Network evaluations per sample (1: one-step)."),
            targets: Optional[str] = typer.Option(None, "--targets", help="teacher | solved: regress on the teacher's "
                                                  "samples, or on its coefficients with the unknown solved exactly."),
            pairs: Optional[int] = typer.Option(None, "--pairs", help="Pairs in the bank."),
            teacher_steps: Optional[int] = typer.Option(None, "--teacher-steps", help="Heun steps N_s of the teacher."),
            refresh: Optional[int] = typer.Option(None, "--refresh", help="Refresh part of the bank every K steps (0: never)."),
            steps: int = typer.Option(2000, "--steps", help="Total optimisation steps."),
            batch: Optional[int] = typer.Option(None, "--batch"),
            lr: Optional[float] = typer.Option(None, "--lr"),
            ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="Sample an EMA of the weights "
                                                      "with this decay, e.g. 0.999 (0: the weights themselves)."),
            seed: Optional[int] = typer.Option(None, "--seed", min=0),
            device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
            resume: bool = typer.Option(False, "--resume", help="Continue OUT/last.pt.")):
    """Distil a teacher into a one-step (or k-step) student with the weak-form residual penalty."""
    from piddm_fem.student import distill as run_distill

    stats = run_distill(teacher_dir, data, out_dir, steps, device=device, resume=resume,
                        lambda_train=lambda_train, ramp_steps=ramp, delay_steps=delay, physics_norm=physics_norm,
                        physics_scale=physics_scale,
                        physics_channels=physics_channels, k_steps=k_steps, targets=targets, pairs=pairs,
                        teacher_steps=teacher_steps, refresh=refresh, batch=batch, lr=lr, ema_decay=ema_decay,
                        seed=seed)
    if stats["interrupted"]:
        raise KeyboardInterrupt
    out.print(f"student at step {stats['step']} in {out_dir}: val regression "
              f"{stats.get('val_regression', float('nan')):.3e}, residual {stats.get('val_residual', float('nan')):.3e}; "
              f"distillation {stats['seconds']:.0f}s, teacher pairs {stats['pair_seconds']:.0f}s")


def sample(student_dir: Path = typer.Argument(..., help="Student run directory or checkpoint."),
           n: int = typer.Option(64, "--n"), seed: int = typer.Option(0, "--seed", min=0),
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
          task: str = typer.Option(..., "--task", help="A task of the problem's metadata (forward | inverse | reconstruct)."),
          data: Path = typer.Option(..., "--data", help="Dataset with the ground truth."),
          index: list[int] = typer.Option(..., "--index", help="Sample indices (repeatable)."),
          points: Optional[int] = typer.Option(None, "--points", help="Observed random nodes, where the task observes points."),
          fraction: Optional[float] = typer.Option(None, "--fraction", help="Observed fraction, where the task observes one."),
          steps: int = typer.Option(200, "--steps"),
          lam: Optional[float] = typer.Option(None, "--lambda", help="Physics weight \\[the norm's: l2 1e-3, dual 0.35]."),
          physics_norm: Optional[str] = typer.Option(None, "--physics-norm", help="Physics penalty: dual (K0^-1 norm) | l2 (scaled residual) \\[dual where u is Dirichlet on the whole boundary, else l2]."),
          restarts: int = typer.Option(4, "--restarts", help="eps restarts per problem (ensemble)."),
          seed: int = typer.Option(0, "--seed", min=0),
          out_path: Optional[Path] = typer.Option(None, "--out", help="HDF5 file of the estimates."),
          physics: str = typer.Option("soft", "--physics", help="inverse: soft (residual penalty) | fem (exact FEM solve in the loop)."),
          adjoint_steps: int = typer.Option(0, "--adjoint-steps", help="inverse: finish with K L-BFGS iterations of the adjoint inversion."),
          noise: float = typer.Option(0.0, "--noise", help="inverse: relative Gaussian noise on the observations."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="inverse: per-problem and summary errors as JSON."),
          device: str = typer.Option("auto", "--device"),
          overwrite: bool = typer.Option(False, "--overwrite")):
    """Forward, inverse or reconstruction by masked latent optimisation; writes mean, std, errors."""
    from piddm_fem import checkpoint, checks, schema
    from piddm_fem.dual_norm import norm_for
    from piddm_fem.student import load_student
    from piddm_fem.tasks import check_observation_options, solve_task, task_weight
    from piddm_fem.teacher import resolve_device

    if out_path is None and json_out is None:
        raise PiddmError("give --out FILE.h5 and/or --json FILE.json for the results")
    if out_path is not None:
        schema.check_output(out_path, overwrite)
    if json_out is not None:
        checks.output_file(json_out, overwrite, example="result.json")
    if lam is not None:
        checks.check_range("--lambda", lam, "[0, inf)")
    checks.check_range("--noise", noise, "[0, 1)")
    checks.check_range("--adjoint-steps", adjoint_steps, "[0, inf)")
    checks.check_choice("--physics", physics, ("soft", "fem"))
    if task != "inverse" and (physics != "soft" or adjoint_steps or noise or json_out):
        raise PiddmError("--physics, --adjoint-steps, --noise and --json belong to --task inverse")
    dev = resolve_device(device)
    student, ckpt, normalizer, operator = load_student(student_dir, dev)
    check_observation_options(checkpoint.meta(ckpt), task, points, fraction)  # both paths below
    physics_norm = norm_for(operator, physics_norm)
    lam = task_weight(physics_norm, lam)
    info, truth, status = schema.read(data, index)
    checkpoint.check_compatible(ckpt, info, data)
    if (status != schema.STATUS_OK).any():
        raise PiddmError(f"{data}: samples {list(np.asarray(index)[status != 1])} have no solution; pick ok samples")
    if task == "inverse" and (physics == "fem" or adjoint_steps or noise or json_out):
        return _invert(student, ckpt, normalizer, operator, info, truth, index, physics=physics,
                       adjoint_steps=adjoint_steps, noise=noise, points=points, steps=steps, lam=lam,
                       norm=physics_norm, restarts=restarts, seed=seed, out_path=out_path,
                       json_out=json_out, overwrite=overwrite)
    result = solve_task(student, normalizer, operator, ckpt, task, truth, points=points,
                        fraction=fraction, steps=steps, lam=lam, norm=physics_norm, restarts=restarts, seed=seed)
    info.source, info.solver_parameters = f"student-{task}", {
        "task": task, "steps": steps, "physics_norm": physics_norm, "lambda": lam, "restarts": restarts,
        "indices": list(index)}
    schema.write(out_path, info, result["mean"], overwrite=overwrite,
                 extra={"std": result["std"], "mask": result["mask"], "truth": truth,
                        **{f"errors/{k}": v for k, v in result["errors"].items()}})
    summary = ", ".join(f"{k} {np.median(v):.3e}" for k, v in result["errors"].items())
    out.print(f"{task}: {len(index)} problems x {restarts} restarts in {result['seconds']:.1f}s; "
              f"median {summary}; wrote {out_path}")


def _invert(student, ckpt, normalizer, operator, info, truth, index, *, physics, adjoint_steps, noise,
            points, steps, lam, norm, restarts, seed, out_path, json_out, overwrite):
    """The inverse task with the FEM solver in the loop (solvers/inverse.py): Algorithm 3 with the
    soft penalty or exact physics, optionally finished by the adjoint inversion."""
    import json

    from piddm_fem import schema
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.inverse import invert

    problem = get_problem(ckpt["problem"], **ckpt.get("params", {}))
    methods = [physics] + ([f"{physics}+adjoint"] if adjoint_steps else [])
    result = invert(problem, truth, methods, student=student, normalizer=normalizer, operator=operator,
                    seed=seed, noise=noise, points=points, steps=steps, restarts=restarts, lam=lam, norm=norm,
                    adjoint_steps=adjoint_steps)
    final = result["methods"][methods[-1]]
    if out_path is not None:
        info.source, info.solver_parameters = f"student-inverse-{physics}", {
            "task": "inverse", "physics": physics, "adjoint_steps": adjoint_steps, "noise": noise,
            "steps": steps, "physics_norm": norm, "lambda": lam, "restarts": restarts, "indices": list(index)}
        schema.write(out_path, info, final["fields"], overwrite=overwrite,
                     extra={"mask": result["mask"], "truth": truth, "observed": result["observed"]})
    if json_out is not None:
        report = {"student_problem": ckpt["problem"], "coefficient": result["coefficient"],
                  "indices": list(index), "seed": seed, "noise": noise,
                  "alpha": result["alpha"], "points": int(result["mask"][0].sum()),
                  "methods": {k: {"problems": v["problems"], "summary": v["summary"]}
                              for k, v in result["methods"].items()}}
        write_atomic(json_out, json.dumps(report, indent=1))
    c = result["coefficient"]
    for name, method in result["methods"].items():
        s = method["summary"]
        out.print(f"{name}: error rate of {c} {s[f'error_rate_{c}']['median']:.3f} "
                  f"({s[f'error_rate_{c}_off_interfaces']['median']:.3f} off its interfaces, "
                  f"{s[f'error_rate_{c}_at_interfaces']['median']:.3f} at them), rel. L2 of {c} "
                  f"{s[f'rel_l2_{c}']['median']:.3f}, misfit {s['misfit']['median']:.2e}, "
                  f"{s['iterations']['median']:.0f} iterations, {s['seconds']['median']:.2f} s/problem (medians)")
