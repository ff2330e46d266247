"""PIDDM student: a one-step generator G(eps) = D(sigma_max eps; sigma_max), distilled post hoc
from the teacher's ODE pairs with the weak-form residual on its *final* sample (the paper's Eq. 8):

    ||G(eps) - x0_T(eps)||^2 + lambda_train * ||R(denorm(G(eps)))||^2

R is ``ResidualOperator.loss`` (mean square of the strong-form scaled residual, physical units),
or with ``physics_norm="dual"`` the residual in the dual norm of the constant-coefficient
stiffness (``piddm_fem.dual_norm``), which weighs it like an error in u. ``physics_scale="typical"``
divides it by the penalty of a typical load (``PhysicsPenalty``'s ``typical``: about 1 for Darcy,
whose f = 1; 0.07 for Poisson and Helmholtz; 3.5e4 for reaction-diffusion, l2 at S = 33), so that
one lambda_train means the same on every problem; "sample" by each sample's own load (in l2 the
square of the relative residual that is reported; the same as "typical" where the load is fixed,
as Darcy's f = 1); "absolute" (the default) keeps physical units.
The penalty is never applied to a posterior mean E[x0 | x_t]. lambda_train = 0 is pure
distillation; lambda is 0 for ``delay_steps``, then rises linearly over ``ramp_steps``.
``physics_channels="unknown"`` lets the penalty's gradient reach the network through the
unknown's channel only. ``k_steps`` = k > 1
makes a k-step student (NFE = k): k Euler steps of the probability-flow ODE with the student's
denoiser on EDM's k-level schedule, trained end to end on the same pairs; k = 1 is G above.
``targets="solved"`` regresses on the teacher's coefficients with the unknown replaced by the exact
solve for them (``piddm_fem.fem_solve``, forms linear in the unknown): targets with zero residual,
so that the regression and the penalty pull towards the same fields.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from piddm_fem import checkpoint, checks, schema
from piddm_fem.data import Normalizer
from piddm_fem.dual_norm import PhysicsPenalty, check_norm
from piddm_fem.edm import HEUN_STEPS, SIGMA_MAX, VAL_STREAM, EDMPrecond, noise_for_indices, sigma_steps
from piddm_fem.errors import PiddmError
from piddm_fem.fem_solve import LinearFEMSolve
from piddm_fem.interrupt import deferred, write_atomic
from piddm_fem.pairs import PairBank, stored_settings
from piddm_fem.progress import progress_bar
from piddm_fem.residual import ResidualOperator
from piddm_fem.tasks import LAMBDA_INFER
from piddm_fem.teacher import (LOG_EVERY, build_network, load_teacher, memory_format, resolve_device, teacher_pairs,
                               update_ema)

OPERATOR_FILE, PAIRS_FILE = "operator.h5", "pairs.h5"
PHYSICS_START = "physics_start.pt"  # with delay_steps: the student at that step, before any penalty
RANGES = {"lambda_train": ("--lambda-train", "[0, inf)"), "ramp_steps": ("--ramp", "[0, inf)"),
          "pairs": ("--pairs", "[1, inf)"), "teacher_steps": ("--teacher-steps", "[1, inf)"),
          "refresh": ("--refresh", "[0, inf)"), "refresh_fraction": ("refresh_fraction", "(0, 1]"),
          "batch": ("--batch", "[1, inf)"), "lr": ("--lr", "(0, inf)"),
          "val_every": ("val_every", "[1, inf)"), "val_pairs": ("val_pairs", "[1, inf)"),
          "delay_steps": ("--delay", "[0, inf)"), "k_steps": ("--k-steps", "[1, 16]"),
          "ema_decay": ("--ema-decay", "[0, 1)")}
PHYSICS_CHANNELS, TARGETS, PHYSICS_SCALES = ("all", "unknown"), ("teacher", "solved"), ("absolute", "typical", "sample")


@dataclass
class DistillConfig:
    lambda_train: float = 1e-2
    ramp_steps: int = 0
    pairs: int = 1024
    teacher_steps: int = HEUN_STEPS
    refresh: int = 250          # refresh part of the bank every this many steps (0: never)
    refresh_fraction: float = 0.1
    batch: int = 32
    lr: float = 2e-4
    grad_clip: float = 1.0
    val_every: int = 250
    val_pairs: int = 64
    seed: int = 0
    physics_norm: str = "l2"      # l2 | dual (piddm_fem.dual_norm)
    physics_scale: str = "absolute"  # absolute | typical | sample: the penalty over a typical load's, or each sample's
    delay_steps: int = 0          # lambda = 0 before this step, then the ramp
    physics_channels: str = "all"  # all | unknown: where the penalty's gradient enters
    k_steps: int = 1              # network evaluations per sample
    targets: str = "teacher"      # teacher | solved: the unknown solved exactly for the teacher's coefficients
    channels_last: bool | None = None  # None: teacher.memory_format's choice for float32 (off on CUDA)
    ema_decay: float = 0.0        # > 0: an EMA of the weights is validated, saved as "ema" and sampled


class Student(nn.Module):
    """G(eps) in normalised space with ``steps`` network evaluations: x = sigma_0 eps, then for
    each level x <- D + (sigma_{i+1} / sigma_i)(x - D), D = D_theta(x; sigma_i), on EDM's
    ``steps``-level schedule (sigma_0 = sigma_max, last 0). One step: D_theta(sigma_max eps; sigma_max)."""

    def __init__(self, net: EDMPrecond, steps: int = 1, sigma_max: float = SIGMA_MAX):
        super().__init__()
        self.net, self.steps = net, int(steps)
        self.sigmas = sigma_steps(self.steps, sigma_max=sigma_max).tolist()

    def forward(self, eps: torch.Tensor) -> torch.Tensor:
        sigmas = self.sigmas
        x = sigmas[0] * eps
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            denoised = self.net(x, sigma)
            x = denoised + (sigma_next / sigma) * (x - denoised)
        return x


class Distiller:
    """One distillation run: student, optimizer, pair bank, residual operator and step."""

    def __init__(self, teacher_dir, data_path, out_dir, settings: dict, device, resume: bool):
        self.out_dir, self.device = Path(out_dir), device
        self.teacher, self.teacher_ckpt = load_teacher(teacher_dir, device)
        self.teacher_path = checkpoint.resolve(teacher_dir)
        info = schema.check_dataset(data_path)
        checkpoint.check_compatible(self.teacher_ckpt, info, data_path)
        prev = None
        if resume and not (self.out_dir / checkpoint.LAST).exists():
            if not (self.out_dir / PAIRS_FILE).exists():
                raise PiddmError(f"nothing to resume: {self.out_dir / checkpoint.LAST} does not exist; "
                                 "drop --resume to start afresh")
            resume = False  # interrupted while making its pairs: the run starts, its bank continues
        if resume:
            prev = checkpoint.load(self.out_dir / checkpoint.LAST, kind="student")
            if not checkpoint.distilled_from(prev, self.teacher_ckpt):
                was = prev["teacher"]
                raise PiddmError(f"{self.out_dir} was distilled from another teacher ({was.get('path')}, step "
                                 f"{was.get('step')}); pass that teacher to resume, or distil into another --out")
            self.cfg = replace(DistillConfig(**prev["config"]["distill"]), **settings)
        else:
            if (self.out_dir / checkpoint.LAST).exists():
                raise PiddmError(f"{self.out_dir} already holds a student; pass --resume to continue "
                                 "it or choose another --out")
            self.cfg = DistillConfig(**settings)
        checks.check_options(self.cfg, RANGES)
        checks.check_choice("--physics-channels", self.cfg.physics_channels, PHYSICS_CHANNELS)
        checks.check_choice("--targets", self.cfg.targets, TARGETS)
        checks.check_choice("--physics-scale", self.cfg.physics_scale, PHYSICS_SCALES)
        check_norm(self.cfg.physics_norm)
        checks.output_dir(self.out_dir)
        self.operator = self._operator(data_path)
        self.normalizer = Normalizer.from_dict(self.teacher_ckpt["normalization"])
        net = copy.deepcopy(self.teacher).requires_grad_(True).to(memory_format=memory_format(self.cfg.channels_last, device))
        self.student = Student(net, self.cfg.k_steps).train()
        self.ema = copy.deepcopy(net).eval().requires_grad_(False) if self.cfg.ema_decay else None
        self.sampled = self.student if self.ema is None else Student(self.ema, self.cfg.k_steps)  # validated, saved
        typical = self.normalizer if self.cfg.physics_scale == "typical" else None
        self.penalty = PhysicsPenalty(self.operator, self.cfg.physics_norm, typical,
                                      per_sample=self.cfg.physics_scale == "sample")
        self.solver = (LinearFEMSolve(self.operator, instead="distil on the teacher's samples: --targets teacher")
                       if self.cfg.targets == "solved" else None)
        self.opt = torch.optim.Adam(self.student.parameters(), lr=self.cfg.lr, fused=device.type == "cuda")
        self.step, self.best_val, self.history, self.train_seconds = 0, float("inf"), [], 0.0
        if prev is not None:
            self.student.net.load_state_dict(prev["model"])
            if self.ema is not None:  # a run without an EMA saved its weights as "ema"
                self.ema.load_state_dict(prev["ema"])
            self.opt.load_state_dict(prev["optimizer"])
            for group in self.opt.param_groups:  # the saved state holds the old rate; a resume may set another
                group["lr"] = self.cfg.lr
            self.step, self.best_val = int(prev["step"]), float(prev["best_val"])
            self.history = list(prev.get("history", []))
            self.train_seconds = float(prev.get("distill_seconds", 0.0))
        self._run_start = time.perf_counter()  # distillation seconds, pairs excluded, are recorded
        # a bank of the same teacher, seed and size is reused (e.g. copied from another run); one of
        # another is the user's to delete
        self.bank = PairBank(self.out_dir / PAIRS_FILE, self.teacher, self.teacher_ckpt, self.cfg.pairs,
                             self.cfg.seed, self.cfg.teacher_steps)

    def _operator(self, data_path) -> ResidualOperator:
        """The dataset's residual operator (``schema.check_dataset`` has matched it to the data's
        problem, parameters and grid), copied next to the student for later sampling."""
        op = schema.read_operator(data_path)
        if op is None:
            raise PiddmError(f"{data_path} holds no residual operator; run `piddm export-operator {data_path}`")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        import h5py

        tmp = self.out_dir / (OPERATOR_FILE + ".partial")
        with h5py.File(tmp, "w") as f:
            schema.write_operator(None, op, h5file=f)
        tmp.replace(self.out_dir / OPERATOR_FILE)
        return ResidualOperator(op).to(self.device)

    def lam(self) -> float:
        ramp, step = self.cfg.ramp_steps, self.step - self.cfg.delay_steps
        if step < 0:
            return 0.0
        return self.cfg.lambda_train * (1.0 if ramp <= 0 else min(1.0, step / ramp))

    def losses(self, eps: torch.Tensor, x0: torch.Tensor, student: Student | None = None):
        """(regression [B], residual penalty [B]) of ``student`` (the one trained) on a batch of pairs."""
        pred = (student or self.student)(eps)
        regression = (pred - x0).square().flatten(1).mean(1)
        x = self.normalizer.denormalize(pred)
        if self.cfg.physics_channels == "unknown":  # the coefficients enter as constants
            keep = torch.zeros(x.shape[1], 1, 1, dtype=torch.bool, device=x.device)
            keep[self.operator.unknown] = True
            x = torch.where(keep, x, x.detach())
        return regression, self.penalty(x)

    def checkpoint_dict(self, cfg: DistillConfig | None = None) -> dict:
        t = self.teacher_ckpt
        weights = self.student.net.state_dict()
        ema = weights if self.ema is None else self.ema.state_dict()
        return {"kind": "student", "problem": t["problem"], "resolution": t["resolution"],
                "channels": t["channels"], "params": t.get("params", {}),
                "boundary": checkpoint.boundary(t), "meta": checkpoint.meta(t),
                "normalization": t["normalization"],
                "config": {**t["config"], "distill": asdict(cfg or self.cfg)},
                "teacher": {"path": str(self.teacher_path), "step": t["step"],
                            "version": t.get("version"), "checksum": t["checksum"]},
                "model": weights, "ema": ema, "optimizer": self.opt.state_dict(),
                "step": self.step, "best_val": self.best_val, "history": self.history,
                "pair_seconds": self.bank.generation_seconds,
                "distill_seconds": self.train_seconds + time.perf_counter() - self._run_start}

    def run(self, steps: int, progress: bool = True) -> dict:
        cfg = self.cfg
        self.bank.fill(progress)
        t_val = time.perf_counter()
        val_idx = np.arange(cfg.val_pairs)
        val_eps, val_x0, _ = teacher_pairs(self.teacher, self.teacher_ckpt, cfg.seed, val_idx,
                                           cfg.teacher_steps, VAL_STREAM)
        val_seconds = time.perf_counter() - t_val
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        t0, interrupted, stats, status = time.perf_counter(), False, {}, ""
        self._run_start = t0
        start = self.step
        bank, val_targets = self._resident_bank(), self.targets(val_x0.to(self.device))
        try:
            with progress_bar(disable=not progress) as bar:
                task = bar.add_task("distill", total=steps, completed=self.step, status="")
                while self.step < steps:
                    idx = torch.randint(len(self.bank), (cfg.batch,), generator=gen).to(self.device)
                    eps, x0 = (b[idx] for b in bank)
                    regression, physics = self.losses(eps, x0)
                    loss = (regression + self.lam() * physics).mean()
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
                    with deferred():  # Ctrl-C waits for the update, its count and the EMA
                        self.opt.step()
                        self.step += 1
                        if self.ema is not None:
                            update_ema(self.ema, self.student.net, cfg.ema_decay, self.step)
                    if cfg.refresh and self.step % cfg.refresh == 0:
                        self.bank.refresh(cfg.refresh_fraction, np.random.default_rng([cfg.seed, self.step]))
                        bank = self._resident_bank()
                    if self.step == cfg.delay_steps:  # pure distillation so far: the lambda = 0 ablation
                        self.save(PHYSICS_START, replace(cfg, lambda_train=0.0, delay_steps=0, ramp_steps=0))
                    if self.step % cfg.val_every == 0 or self.step == steps:
                        stats = self.validate(val_eps.to(self.device), val_targets)
                        self.save(checkpoint.LAST)
                    if self.step % LOG_EVERY == 0 or self.step == steps:  # host reads wait for the GPU
                        rate = (self.step - start) / (time.perf_counter() - t0)
                        status = (f"mse={float(regression.detach().mean()):.2e} R={float(physics.detach().mean()):.2e} "
                                  f"lam={self.lam():.1e} {rate:.1f} it/s")
                    bar.update(task, completed=self.step, status=status)
        except KeyboardInterrupt:
            interrupted = True
            self.save(checkpoint.LAST)
        finally:
            self.bank_seconds = self.bank.generation_seconds
            self.bank.close()
        return {"step": self.step, **stats, "history": self.history, "seconds": time.perf_counter() - t0,
                "pair_seconds": self.bank_seconds, "val_pair_seconds": val_seconds,
                "interrupted": interrupted, "out": str(self.out_dir)}

    def _resident_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair bank's (eps, regression targets) on the device, indexed there."""
        return self.bank.eps.to(self.device), self.targets(self.bank.x0.to(self.device))

    @torch.no_grad()
    def targets(self, x0: torch.Tensor) -> torch.Tensor:
        """The regression targets of the teacher's samples x0 (normalised): x0 itself, or with
        ``targets="solved"`` x0's coefficients with the unknown solved for them in float64."""
        if self.solver is None:
            return x0
        solved = self.solver.solve(self.normalizer.denormalize(x0.double()))  # in chunks of bounded memory
        return self.normalizer.normalize(solved).to(x0.dtype)

    @torch.no_grad()
    def validate(self, eps, x0) -> dict:
        self.student.eval()
        regression, physics = self.losses(eps, x0, self.sampled)
        relative = self.operator.relative(self.normalizer.denormalize(self.sampled(eps)).double())
        self.student.train()
        objective = float((regression + self.cfg.lambda_train * physics).mean())
        stats = {"val_regression": float(regression.mean()), "val_residual": float(physics.mean()),
                 "val_objective": objective, "val_relative_residual": float(relative.median())}
        self.history.append({"step": self.step, "lambda": self.lam(), **stats})  # the learning curve
        if objective < self.best_val:
            self.best_val = objective
            self.save(checkpoint.BEST)
        return stats

    def save(self, name: str, cfg: DistillConfig | None = None) -> None:
        """Write a checkpoint; ``cfg`` records other settings than the run's (physics_start.pt)."""
        checkpoint.save(self.out_dir / name, self.checkpoint_dict(cfg))


def late_physics(steps: int, lambda_train: float) -> dict:
    """The distillation schedule measured best (docs/results.md, issue 12), as DistillConfig
    settings for a run of ``steps``: pure distillation for the first half (its end is kept as
    physics_start.pt, the lambda = 0 ablation), then the penalty, relative to each sample's load
    (so that ``lambda_train`` means the same on every problem, and weighs the relative residual
    that is reported) and with its gradient through the unknown's channel only, ramped over an
    eighth of the steps to ``lambda_train``; validation and bank refreshes every quarter."""
    return {"lambda_train": lambda_train, "delay_steps": steps // 2, "ramp_steps": steps // 8,
            "physics_channels": "unknown", "physics_scale": "sample", "val_every": max(1, steps // 4),
            "refresh": max(1, steps // 4)}


def distill(teacher_dir, data_path, out_dir, steps: int, device: str = "auto", resume: bool = False,
            progress: bool = True, **settings) -> dict:
    """Distil (or with ``resume`` continue) a student until step ``steps``; returns run stats.

    ``settings`` are DistillConfig fields; None leaves the default (or the checkpoint's value)."""
    if steps < 1:
        raise PiddmError(f"--steps {steps} must be >= 1")
    settings = {k: v for k, v in settings.items() if v is not None}
    unknown = set(settings) - {f.name for f in fields(DistillConfig)}
    if unknown:
        raise TypeError(f"unknown distillation settings {sorted(unknown)}")
    fresh = DistillConfig(**settings)
    if not resume and fresh.lambda_train and fresh.delay_steps >= steps:
        raise PiddmError(f"--delay {fresh.delay_steps} is not below --steps {steps}: the residual penalty would "
                         "never start; pass a smaller --delay or more --steps")
    distiller = Distiller(teacher_dir, data_path, out_dir, settings, resolve_device(device), resume)
    if steps < distiller.step:
        distiller.bank.close()  # the bank file stays usable by the next run
    checks.steps_reach(steps, distiller.step)
    return distiller.run(steps, progress)


def distill_late_physics(teacher_dir, data_path, out_dir, steps: int, lambda_train: float,
                         device: str = "auto", **settings) -> dict:
    """The recipe of the demo and the GPU protocol: ``distill`` on ``late_physics(steps,
    lambda_train)`` (plus ``settings``), resumed from OUT/last.pt where one exists; an interrupted
    run raises KeyboardInterrupt (its state is saved), a finished one writes its stats to OUT/done."""
    out_dir = Path(out_dir)
    stats = distill(teacher_dir, data_path, out_dir, steps, device=device,
                    resume=(out_dir / checkpoint.LAST).exists(), **settings, **late_physics(steps, lambda_train))
    if stats["interrupted"]:
        raise KeyboardInterrupt
    write_atomic(out_dir / checkpoint.DONE, json.dumps(stats))
    return stats


def share_pair_bank(src_dir, dst_dir, **settings) -> bool:
    """Copy a finished run's pair bank into a new run of the same teacher (e.g. the lambda_train
    = 0 ablation), so that the teacher is not integrated twice for the same pairs: only where it
    is the bank that a run with ``settings`` (DistillConfig fields; ``pairs``, ``seed`` and
    ``teacher_steps`` matter) would make, and the new run has none. Returns whether it copied."""
    cfg = DistillConfig(**{k: v for k, v in settings.items() if v is not None})
    src, dst = Path(src_dir) / PAIRS_FILE, Path(dst_dir) / PAIRS_FILE
    if not src.exists() or dst.exists():
        return False
    stored = stored_settings(src)
    same = stored == {k: getattr(cfg, k) for k in stored}
    if same:
        dst.parent.mkdir(parents=True, exist_ok=True)
        partial = dst.with_name(dst.name + ".partial")  # an interrupted copy leaves no truncated bank
        shutil.copy(src, partial)
        partial.replace(dst)
    return same


def load_student(student_dir, device="cpu"):
    """(Student in eval mode, checkpoint dict, Normalizer, ResidualOperator); the operator beside
    the checkpoint must be of the student's problem, parameters, grid and channels."""
    ckpt = checkpoint.load(student_dir, kind="student")
    net = build_network(ckpt["config"], device)
    net.load_state_dict(ckpt["ema"])
    student = Student(net, ckpt["config"]["distill"].get("k_steps", 1)).eval()
    op_path = checkpoint.resolve(student_dir).parent / OPERATOR_FILE
    if not op_path.is_file():
        raise PiddmError(f"{op_path.parent} holds no {OPERATOR_FILE} beside the student; copy it from "
                         "the distillation run directory (`piddm distill` writes it there)")
    operator = ResidualOperator.from_file(op_path).to(device)
    have = (operator.problem, operator.params, operator.resolution, list(operator.channels))
    want = (ckpt["problem"], dict(ckpt.get("params", {})), int(ckpt["resolution"]), list(ckpt["channels"]))
    if have != want:
        raise PiddmError(f"{op_path}: the operator is for {have[0]} S={have[2]} {have[1]} but the student "
                         f"was trained on {want[0]} S={want[2]} {want[1]}; copy the {OPERATOR_FILE} of the "
                         "student's own distillation run beside it")
    return student, ckpt, Normalizer.from_dict(ckpt["normalization"]), operator


def student_noise(ckpt: dict, seed: int, indices, device="cpu") -> torch.Tensor:
    shape = (len(ckpt["channels"]), ckpt["resolution"], ckpt["resolution"])
    return noise_for_indices(seed, indices, shape, device=device)


def sample_student(student_dir, n: int, seed: int = 0, refine_steps: int = 0, lambda_infer: float = LAMBDA_INFER,
                   out_path=None, device: str = "auto", batch: int = 64, overwrite: bool = False) -> dict:
    """`piddm sample`: ``sample_fields`` of the student in ``student_dir``, written in the
    dataset schema when ``out_path`` is given."""
    if out_path is not None:
        schema.check_output(out_path, overwrite)
    student, ckpt, normalizer, operator = load_student(student_dir, resolve_device(device))
    stats = sample_fields(student, ckpt, normalizer, operator, n, seed, refine_steps, lambda_infer, batch)
    if out_path is not None:
        info = checkpoint.dataset_info(ckpt, n, seed, "student-refined" if refine_steps else "student",
                                       {"refine": refine_steps, "lambda_infer": lambda_infer,
                                        "student_step": int(ckpt["step"])})
        schema.write(out_path, info, stats["fields"], overwrite=overwrite)
    return stats


def sample_fields(student, ckpt: dict, normalizer, operator, n: int, seed: int = 0, refine_steps: int = 0,
                  lambda_infer: float = LAMBDA_INFER, batch: int = 64) -> dict:
    """PIDDM-1 samples (noise indices 0..n-1 of ``seed``), refined to PIDDM-ref when
    ``refine_steps`` > 0, in physical units [n, C, S, S] (``tasks.refine``). Returns the fields,
    the relative residual before/after refinement and timings."""
    from piddm_fem.tasks import refine

    if n < 1 or batch < 1 or refine_steps < 0:
        raise PiddmError(f"--n {n} and --batch {batch} must be >= 1 and --refine {refine_steps} >= 0")
    checks.check_range("--lambda-infer", lambda_infer, "[0, inf)")
    dev = next(student.parameters()).device
    fields = np.empty((n, len(ckpt["channels"]), ckpt["resolution"], ckpt["resolution"]))
    before, after = np.empty(n), np.empty(n)
    t_sample = t_refine = 0.0
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        eps = student_noise(ckpt, seed, idx, dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = normalizer.denormalize(student(eps))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_sample += time.perf_counter() - t0
        with torch.no_grad():
            before[idx] = operator.relative(x.double()).cpu().numpy()
        if refine_steps:
            t0 = time.perf_counter()
            x = refine(student, normalizer, operator, eps, refine_steps, lambda_infer)["x"]
            t_refine += time.perf_counter() - t0
        with torch.no_grad():
            after[idx] = operator.relative(x.double()).cpu().numpy()
        fields[idx] = x.detach().double().cpu().numpy()
    return {"fields": fields, "residual_before": before, "residual_after": after,
            "seconds_per_sample": (t_sample + t_refine) / n, "sample_seconds": t_sample, "nfe": student.steps,
            "refine_seconds": t_refine, "device": str(dev)}
