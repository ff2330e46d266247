"""Side-by-side evaluation of teacher, PIDDM-1, PIDDM-ref and ablations on held-out data.

Used by `piddm demo` and by benchmarks/piddm_seeds.py. Residuals are reported twice: by the torch
operator and by Firedrake's assembled FEM residual (the same relative norm, docs/residual.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from piddm_fem import metrics, schema

TASK_SETTINGS = {"forward": {}, "inverse": {}, "reconstruct": {"fraction": 0.1}}


def fem_relative(data_info, fields) -> np.ndarray:
    """Firedrake's relative residual of every sample (the `piddm validate` number)."""
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.discrete import DiscreteProblem

    disc = DiscreteProblem(get_problem(data_info.problem, **data_info.params), data_info.resolution)
    return np.array([disc.relative_residual(f) for f in fields])


def method_row(name, fields, reference, operator, info, seconds_per_sample, channels, fem=True) -> dict:
    mmse, smse = metrics.mmse_smse(fields, reference)
    row = {"method": name, "residual_torch": metrics.summarize(metrics.residual(operator, fields)),
           "residual_fem": metrics.summarize(fem_relative(info, fields)) if fem else None,
           "mmse": dict(zip(channels, mmse.tolist())), "smse": dict(zip(channels, smse.tolist())),
           "seconds_per_sample": seconds_per_sample}
    if info.problem == "darcy":
        row["fraction_a_high"] = metrics.high_fraction(fields, channels.index("a"))
    return row


def evaluate(data, teacher_dir, students: dict, out_dir, *, n_eval=128, heun_steps=18, refine_steps=40,
             lambda_infer=1e-2, task_problems=8, restarts=4, task_steps=150, task_lambda=1e-3,
             seed=1, device="auto", fem=True) -> dict:
    """Sample every method, compare with the test split, run the tasks with the first student.

    ``fem=False`` skips Firedrake's residual (a GPU node without Firedrake): the torch operator's
    residual is reported alone."""
    from piddm_fem.residual import ResidualOperator
    from piddm_fem.student import load_student, sample_student
    from piddm_fem import checkpoint
    from piddm_fem.tasks import solve_task
    from piddm_fem.teacher import dataset_splits, resolve_device, sample_teacher

    out_dir = Path(out_dir)
    info, splits = dataset_splits(checkpoint.load(teacher_dir, kind="teacher"), data)
    test = splits["test"]
    _, reference, _ = schema.read(data, test)
    operator = ResidualOperator.from_file(data)
    channels = info.channels
    results = {"n_eval": n_eval, "n_test": int(test.size), "seed": seed, "methods": [],
               "reference": {"fraction_a_high": metrics.high_fraction(reference, channels.index("a"))
                             if info.problem == "darcy" else None,
                             "residual_torch": metrics.summarize(metrics.residual(operator, reference)),
                             "residual_fem": metrics.summarize(fem_relative(info, reference[:16])) if fem else None}}
    samples = {}
    t = sample_teacher(teacher_dir, n_eval, heun_steps, seed, out_dir / "teacher_samples.h5",
                       device=device, overwrite=True)
    samples["teacher"] = schema.read(out_dir / "teacher_samples.h5")[1]
    results["methods"].append(method_row(f"teacher (N_s={heun_steps}, {t['nfe']} NFE)", samples["teacher"],
                                         reference, operator, info, t["seconds_per_sample"], channels, fem))
    results["teacher_nfe"] = t["nfe"]
    for k, (name, student_dir) in enumerate(students.items()):
        s = sample_student(student_dir, n_eval, seed, out_path=out_dir / f"{name}_samples.h5".replace("=", ""),
                           device=device, overwrite=True)
        samples[name] = s["fields"]
        results["methods"].append(method_row(name, s["fields"], reference, operator, info,
                                             s["seconds_per_sample"], channels, fem))
        if k == 0 and refine_steps:
            r = sample_student(student_dir, n_eval, seed, refine_steps, lambda_infer,
                               out_dir / "PIDDM-ref_samples.h5", device=device, overwrite=True)
            samples["PIDDM-ref"] = r["fields"]
            results["methods"].append(method_row(f"PIDDM-ref ({refine_steps} steps)", r["fields"], reference,
                                                 operator, info, r["seconds_per_sample"], channels, fem))
    first = next(iter(students.values()))
    student, ckpt, normalizer, op = load_student(first, resolve_device(device))
    idx = test[:task_problems]
    _, truth, _ = schema.read(data, idx)
    results["tasks"] = {}
    task_outputs = {}
    for task, extra in TASK_SETTINGS.items():
        t0 = time.perf_counter()
        r = solve_task(student, normalizer, op, ckpt, task, truth, steps=task_steps, lam=task_lambda,
                       restarts=restarts, seed=seed, **extra)
        results["tasks"][task] = {k: metrics.summarize(v) for k, v in r["errors"].items()}
        results["tasks"][task]["seconds"] = time.perf_counter() - t0
        task_outputs[task] = r
    from piddm_fem.cli.report import figures

    results["figures"] = figures(out_dir, samples, reference, truth, task_outputs, operator, channels)
    return results

