"""Why does the one-step student not follow the teacher? Diagnosis figures and numbers (issue 12).

For the data, the teacher's samples and each student's samples (same noise indices):
- learning curves from each student checkpoint's validation history: regression loss and the
  relative weak-form residual against steps (learning_curves.png);
- where the residual sits: the share of the scaled residual's energy on nodes next to an
  interface of each binary channel, against the share of such nodes (``interface``);
- its radially averaged power spectrum (spectrum.png);
- which channel the physics penalty pushes: the norm of the penalty's gradient with respect to each
  output channel in normalised units, for the l2 and the dual-norm penalty (``gradient_share``),
  and, for each student, the norm of lambda * the penalty's gradient on the weights through each
  channel alone (the others held constant) against the regression's, with their cosines
  (``weight_gradients``, on 32 pairs of the student's bank).
torch only. Writes OUT/diagnosis.json and the figures.

    python benchmarks/student_diagnosis.py --data data.h5 --teacher-samples t.h5 \
        --student PIDDM-1=runs/s1 --student lambda0=runs/s0 --out docs/figures/diagnosis
"""

from __future__ import annotations

import argparse
import json

import h5py
from pathlib import Path

import numpy as np
import torch

from piddm_fem import checkpoint, metrics, schema
from piddm_fem.data import Normalizer
from piddm_fem.dual_norm import PHYSICS_NORMS, PhysicsPenalty
from piddm_fem.errors import script_main
from piddm_fem.figures import plot_lines
from piddm_fem.interrupt import write_atomic
from piddm_fem.residual import ResidualOperator
from piddm_fem.student import load_student, sample_student


def radial_spectrum(r: np.ndarray) -> np.ndarray:
    """Mean over samples of the radially binned |FFT|^2 of the interior residual [N, S-2, S-2]."""
    power = np.abs(np.fft.fft2(r)) ** 2
    n = r.shape[-1]
    k = np.fft.fftfreq(n) * n
    radius = np.rint(np.hypot(*np.meshgrid(k, k))).astype(int)
    total = np.bincount(radius.ravel(), weights=power.mean(0).ravel())
    return total[: n // 2] / np.maximum(np.bincount(radius.ravel())[: n // 2], 1)


def interface_share(scaled: np.ndarray, coefficient: np.ndarray, threshold: float) -> dict:
    """Share of residual energy on nodes with a neighbour across the threshold, and of such nodes."""
    near = metrics.interface_nodes(coefficient > threshold)
    energy = scaled**2
    return {"energy_share": float(energy[near].sum() / energy.sum()), "node_share": float(near.mean())}


def gradient_share(operator, normalizer, fields: np.ndarray) -> dict:
    """Per penalty, the norm of d(penalty)/d(normalised channel), as a share over the channels."""
    x = normalizer.normalize(torch.from_numpy(fields).float()).double().requires_grad_(True)
    out = {}
    for name in PHYSICS_NORMS:
        penalty = PhysicsPenalty(operator, name)
        physical = normalizer.denormalize(x)
        grad, = torch.autograd.grad(penalty(physical).sum(), [x])
        norms = grad.flatten(2).norm(dim=2).mean(0)
        out[name] = (norms / norms.sum()).tolist()
    return out


def weight_gradients(student_dir, channels, n: int = 32) -> dict:
    """Norms of the regression's and of lambda * penalty's gradient on the student's weights, the
    penalty's through each channel alone, and their cosines with the regression's."""
    student, ckpt, normalizer, operator = load_student(student_dir)
    cfg = ckpt["config"]["distill"]
    penalty = PhysicsPenalty(operator, cfg.get("physics_norm", "l2"))
    with h5py.File(Path(student_dir) / "pairs.h5") as f:
        eps, x0 = torch.from_numpy(f["eps"][:n]), torch.from_numpy(f["x0"][:n])
    params = [p for p in student.parameters()]

    def grad(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    pred = student(eps)
    out = {"regression": grad((pred - x0).square().mean())}
    for c, name in enumerate(channels):
        keep = torch.zeros(len(channels), 1, 1, dtype=torch.bool)
        keep[c] = True
        x = normalizer.denormalize(student(eps))
        x = torch.where(keep, x, x.detach()).double()
        out[f"physics via {name}"] = cfg["lambda_train"] * grad(penalty(x).mean().float())
    reg = out["regression"]
    return {k: {"norm": float(g.norm()), "cosine_with_regression": float(g @ reg / (g.norm() * reg.norm() + 1e-30))}
            for k, g in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher-samples", required=True)
    p.add_argument("--student", action="append", default=[], help="NAME=DIR (repeatable)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    info = schema.read_info(args.data)
    operator = ResidualOperator.from_file(args.data)
    _, data, _ = schema.read(args.data, np.arange(args.n))
    sets = {"data": data, "teacher": schema.read(args.teacher_samples)[1][: args.n]}
    students = dict(s.rsplit("=", 1) for s in args.student)  # names may hold "=", paths do not
    for name, path in students.items():
        sets[name] = sample_student(path, args.n, 0, device="cpu")["fields"]
    normalizer = Normalizer.from_dict(checkpoint.load(next(iter(students.values())), kind="student")["normalization"])
    report = {"n": args.n, "sets": {}}
    spectra = {}
    for name, fields in sets.items():
        with torch.no_grad():
            scaled = operator.scaled(torch.from_numpy(fields))[:, 0].numpy()
        row = {"relative_residual_median": float(np.median(operator.relative(torch.from_numpy(fields)).numpy())),
               "interface": {c: interface_share(scaled, fields[:, info.channels.index(c)], t)
                             for c, t in info.meta["thresholds"].items()},
               "gradient_share": dict(zip(("l2", "dual"), [dict(zip(info.channels, v)) for v in
                                                           gradient_share(operator, normalizer, fields).values()]))}
        report["sets"][name] = row
        spectra[name] = radial_spectrum(scaled[:, 1:-1, 1:-1])
    curves = {"regression (normalised MSE)": {}, "relative residual (median)": {}}
    for name, path in students.items():
        history = checkpoint.load(path, kind="student").get("history", [])
        steps = [h["step"] for h in history]
        curves["regression (normalised MSE)"][name] = (steps, [h["val_regression"] for h in history])
        curves["relative residual (median)"][name] = (steps, [h.get("val_relative_residual", np.nan) for h in history])
        report["sets"][name]["history"] = history
        report["sets"][name]["weight_gradients"] = weight_gradients(path, info.channels)
    plot_lines(list(curves.items()), out / "learning_curves.png", xlabel="distillation step",
               title="student learning curves (validation pairs)")
    k = np.arange(1, len(next(iter(spectra.values()))))
    plot_lines([("residual power", {n: (k, s[1:]) for n, s in spectra.items() if n != "data"})],
               out / "spectrum.png", xlabel="wavenumber |k|", logx=True,
               title="radially averaged spectrum of the scaled residual")
    write_atomic(out / "diagnosis.json", json.dumps(report, indent=1))
    print(json.dumps({n: {k: v for k, v in r.items() if k != "history"} for n, r in report["sets"].items()}, indent=1))


if __name__ == "__main__":
    script_main(main)
