"""One harness for every method on the same teacher: sampling, the tasks, metrics per seed.

A method (``piddm_fem.baselines``) follows the ``Method`` protocol: a ``name``, ``nfe`` network
evaluations per sample, ``sample(n, seed)`` and ``solve_task(task, observed, mask, seed)``, both
returning fields [N, C, S, S] in physical units (numpy float64). A method that cannot do
something raises ``PiddmError`` naming itself and the task (``cannot``). ``compare`` builds the
selected methods from one ``Setup`` (teacher, students, data, operator), runs every seed and
returns one row per method: metrics as mean and std over the seeds.

torch only: Firedrake's assembled residual is imported lazily and only with ``fem=True``.
Everything about the problem comes from the dataset's metadata (``DatasetInfo.meta``: channel
names, tasks, thresholds of binary channels, the finite-difference residual where one exists).
"""

from __future__ import annotations

import functools
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from piddm_fem import checkpoint, checks, metrics, schema
from piddm_fem.dual_norm import norm_for
from piddm_fem.edm import HEUN_STEPS
from piddm_fem.errors import PiddmError
from piddm_fem.interrupt import write_atomic
from piddm_fem.tasks import LAMBDA_INFER, RESTARTS, observation_mask, task_errors, task_weight


class Method(Protocol):
    """What the harness needs of a method (see the module docstring)."""

    name: str
    nfe: int

    def sample(self, n: int, seed: int) -> np.ndarray: ...

    def solve_task(self, task: str, observed: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray: ...


def cannot(method: str, task: str, can: tuple) -> PiddmError:
    """The one-line error of a method asked for something it does not do."""
    does = ", ".join(can) if can else "nothing"
    return PiddmError(f"method {method} cannot do {task} (it does: {does}); drop it from --methods "
                      "or choose a task it does")


GUIDED_STEPS = 2000  # DiffusionPDE's Heun steps
COPY_REFERENCE = 4096  # training samples the copy ratio measures distances to (memory bound)


@dataclass
class Budget:
    """Every method's settings, fixed before any run (docs/baselines.md says how they were chosen);
    one trial of each for every method."""

    n_eval: int = 64            # unconditional samples per method and seed
    task_problems: int = 8      # test problems per task and seed
    heun_steps: int = HEUN_STEPS  # N_s of the teacher (and of PIDM, ECI, the guided samplers' default)
    guidance_steps: int = 200   # Heun steps of DiffusionPDE / DPS guidance (their default 2000)
    zeta_obs: float | None = None  # DiffusionPDE's observation weight, every channel (None: ``observation_weights``'s rule)
    zeta_pde: float = 1.0       # weight of the relative residual of E[x0|xt] (docs/baselines.md)
    pde_from: float = 0.8       # guidance adds the PDE term after this fraction of the steps
    refine_steps: int = 40      # PIDDM-ref
    lambda_infer: float = LAMBDA_INFER
    restarts: int = RESTARTS    # PIDDM task ensembles
    task_samples: int | None = None  # samples averaged per task estimate, every stochastic method (None: PIDDM's restarts, one for the others)
    task_steps: int = 100       # PIDDM-ref / lambda=0 task steps and direct optimisation steps
    task_norm: str | None = None      # physics penalty of the optimisation methods on the tasks (None: natural)
    task_lambda: float | None = None  # its weight (None: the norm's default, tasks.TASK_LAMBDA)
    direct_lr: float = 0.05
    pidm_steps: int = 200       # PIDM fine-tuning steps of the teacher
    pidm_lambda: float = 1e-3   # PIDM's c_residual
    fno_seconds: float = 60.0   # FNO training wall-clock (the teacher's, where known)
    fno_modes: int = 8
    fno_width: int = 24
    batch: int = 64

    def __post_init__(self):  # every budget, however made (defaults, replace, a caller's), is checked
        checks.check_options(self, BUDGET_RANGES)


# what each setting may be, named as `piddm compare` spells the ones it takes
BUDGET_RANGES = {"n_eval": ("--n-eval", "[1, inf)"), "task_problems": ("--task-problems", "[1, inf)"),
                 "guidance_steps": ("--guidance-steps", "[1, inf)"), "fno_seconds": ("--fno-seconds", "(0, inf)"),
                 "heun_steps": ("heun_steps", "[1, inf)"), "refine_steps": ("refine_steps", "[0, inf)"),
                 "lambda_infer": ("lambda_infer", "[0, inf)"), "restarts": ("restarts", "[1, inf)"),
                 "task_samples": ("--task-samples", "[1, inf)"),
                 "task_steps": ("task_steps", "[0, inf)"), "pidm_steps": ("pidm_steps", "[0, inf)"),
                 "batch": ("batch", "[1, inf)"), "zeta_pde": ("zeta_pde", "[0, inf)"),
                 "pde_from": ("pde_from", "[0, 1]"), "direct_lr": ("direct_lr", "(0, inf)"),
                 "pidm_lambda": ("pidm_lambda", "[0, inf)"), "fno_modes": ("fno_modes", "[1, inf)"),
                 "fno_width": ("fno_width", "[1, inf)")}

QUICK = Budget(n_eval=4, task_problems=2, heun_steps=3, guidance_steps=4, refine_steps=2, restarts=2,
               task_steps=3, pidm_steps=2, fno_seconds=1.0, fno_modes=4, fno_width=8)


@dataclass
class Setup:
    """What every method shares: the teacher network, the data, its operator and the budget."""

    data: Path
    info: schema.DatasetInfo
    splits: dict
    teacher_dir: Path
    teacher: torch.nn.Module           # EMA denoiser in normalised space
    teacher_ckpt: dict
    normalizer: object
    operator: torch.nn.Module          # ResidualOperator on ``device``
    device: torch.device
    budget: Budget
    students: dict = field(default_factory=dict)   # {"PIDDM": dir, "lambda=0": dir}
    out_dir: Path | None = None

    @property
    def task_norm(self) -> str:
        """The budget's physics norm on the tasks, the operator's natural norm unless set."""
        return norm_for(self.operator, self.budget.task_norm, "task_norm")

    @property
    def task_weight(self) -> float:
        """The budget's physics weight on the tasks, its norm's default unless set."""
        return task_weight(self.task_norm, self.budget.task_lambda)

    @property
    def channels(self) -> list[str]:
        return list(self.info.channels)

    @property
    def shape(self) -> tuple:
        S = self.info.resolution
        return (len(self.info.channels), S, S)


def fd_residual_of(info, x: torch.Tensor, operator=None) -> torch.Tensor | None:
    """[B, 1, S, S] finite-difference residual of the strong form the problem declares (DiffusionPDE's
    style, correct 1/h scaling; Dirichlet rows u - g when ``operator`` is given), or None where it
    declares none."""
    from piddm_fem.fd_residual import fd_residual

    expression = info.meta["fd_residual"]
    if expression is None:
        return None
    bc = {} if operator is None else {"bc_mask": operator.bc_mask, "bc_values": operator.bc_values}
    return fd_residual(x, expression, info.channels, info.params, info.channels.index(info.meta["unknown"]), **bc)


def fd_rms(info, fields) -> np.ndarray | None:
    """[N] RMS of the FD residual over interior nodes (the papers' PDE error, absolute), or None."""
    r = fd_residual_of(info, torch.as_tensor(np.asarray(fields), dtype=torch.float64))
    return None if r is None else r[:, 0, 1:-1, 1:-1].flatten(1).square().mean(1).sqrt().numpy()


@functools.lru_cache(maxsize=4)
def _discrete(problem: str, params: tuple, resolution: int):
    """Firedrake's discrete problem, built (and its forms compiled) once per process."""
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.discrete import DiscreteProblem

    return DiscreteProblem(get_problem(problem, **dict(params)), resolution)


def fem_relative(info, fields) -> np.ndarray:
    """Firedrake's relative residual of every sample (the `piddm validate` number)."""
    disc = _discrete(info.problem, tuple(sorted(info.params.items())), info.resolution)
    return np.array([disc.relative_residual(f) for f in fields])


def field_metrics(info, operator, fields, reference=None, fem: bool = False, train=None) -> dict:
    """Residuals (weak form torch, FD, optional FEM), MMSE/SMSE per channel against ``reference``,
    the copy ratio against ``train`` (``metrics.copy_ratio``) and the fraction above threshold of
    every binary channel."""
    channels = list(info.channels)
    row = {"residual": metrics.summarize(metrics.residual(operator, fields))}
    fd = fd_rms(info, fields)
    if fd is not None:
        row["residual_fd"] = metrics.summarize(fd)
    if fem:
        row["residual_fem"] = metrics.summarize(fem_relative(info, fields))
    if reference is not None:
        mmse, smse = metrics.mmse_smse(fields, reference)
        row["mmse"] = dict(zip(channels, mmse.tolist()))
        row["smse"] = dict(zip(channels, smse.tolist()))
        if train is not None:
            row["copy_ratio"] = metrics.copy_ratio(fields, train, reference)
    for name, threshold in info.meta["thresholds"].items():
        row[f"fraction_{name}_above"] = metrics.high_fraction(fields, channels.index(name), threshold)
    return row


def load_setup(data, teacher_dir, students: dict | None = None, budget: Budget | None = None,
               device: str = "auto", out_dir=None, min_test: int = 2) -> Setup:
    """Teacher, data splits, operator and students, checked to belong together; the test split
    must hold ``min_test`` samples."""
    from piddm_fem.data import Normalizer
    from piddm_fem.residual import ResidualOperator
    from piddm_fem.teacher import dataset_splits, load_teacher, resolve_device

    dev = resolve_device(device)
    teacher, ckpt = load_teacher(teacher_dir, dev)
    info, splits = dataset_splits(ckpt, data)
    for name, d in (students or {}).items():
        _check_student(ckpt, teacher_dir, checkpoint.load(d, kind="student"), d)
    operator = ResidualOperator.from_file(data).to(dev)
    if splits["test"].size < min_test:
        raise PiddmError(f"{data}: the test split holds {splits['test'].size} samples; generate at least "
                         "20 samples so that the comparison has held-out data")
    return Setup(Path(data), info, splits, Path(teacher_dir), teacher, ckpt,
                 Normalizer.from_dict(ckpt["normalization"]), operator, dev, budget or Budget(),
                 dict(students or {}), None if out_dir is None else checks.output_dir(out_dir))


def _check_student(teacher_ckpt: dict, teacher_dir, student_ckpt: dict, student_dir) -> None:
    """A student must come from a teacher of the same dataset (problem, grid, channels,
    parameters and training-split normalisation)."""
    keys = ("problem", "resolution", "channels", "params", "normalization")
    have = {k: student_ckpt.get(k) for k in keys}
    want = {k: teacher_ckpt.get(k) for k in keys}
    if have != want:
        differ = ", ".join(k for k in keys if have[k] != want[k])
        raise PiddmError(f"student {student_dir} comes from a teacher of another dataset than {teacher_dir} "
                         f"({differ} differ); pass the teacher the student was distilled from")
    if not checkpoint.distilled_from(student_ckpt, teacher_ckpt):
        was = student_ckpt["teacher"]
        raise PiddmError(f"student {student_dir} was distilled from another teacher ({was.get('path')}, step "
                         f"{was.get('step')}) than {teacher_dir}; pass the teacher the student was distilled from")


def made_from(setup: Setup) -> dict:
    """What a comparison's results are made from: the dataset file's SHA-256 and the checksums of
    the teacher and student checkpoints."""
    return {"data": schema.digest(setup.data), "teacher": setup.teacher_ckpt["checksum"],
            "students": {name: checkpoint.load(d, kind="student")["checksum"] for name, d in setup.students.items()}}


def _timed(device, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def machine(device: torch.device) -> str:
    """The machine a timing was measured on, for tables and figures: the GPU's name, or the CPU
    with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def run_seed(setup: Setup, methods: list[Method], seed: int, tasks, fem: bool = False, done=None) -> dict:
    """Every method on one seed: {method: {"sample": metrics, "tasks": {task: errors}}} plus the
    fields used for the figures under "_fields". ``done`` (a ``_SavedSeed``) holds the rows and
    fields of methods finished before, which are kept, not rerun; it is called with the rows and
    fields so far after each method."""
    b = setup.budget
    _, reference, _ = schema.read(setup.data, setup.splits["test"])
    train = None  # the copy ratio's training fields, read at the first method that samples
    idx = setup.splits["test"][:b.task_problems]
    _, truth, _ = schema.read(setup.data, idx)
    masks = {task: observation_mask(task, truth.shape, setup.channels, setup.info.meta, seed=seed).numpy()
             for task in tasks}
    rows, shown = ({}, {}) if done is None else (dict(done.rows), dict(done.shown))
    shown.update(truth=truth, masks=masks)
    for m in methods:
        if m.name in rows:
            continue
        row = {"nfe": m.nfe}
        if "sample" in m.can:
            if train is None:
                _, train, _ = schema.read(setup.data, setup.splits["train"][:COPY_REFERENCE])
            fields, seconds = _timed(setup.device, m.sample, b.n_eval, seed)
            row["sample"] = {**field_metrics(setup.info, setup.operator, fields, reference, fem, train),
                             "seconds_per_sample": seconds / b.n_eval}
            shown.setdefault("samples", {})[m.name] = fields[0]
        row["tasks"] = {}
        for task in tasks:
            if task not in m.can:
                continue
            observed = np.where(masks[task] > 0, truth, 0.0)
            est, seconds = _timed(setup.device, m.task_estimate, task, observed, masks[task], seed)
            errs = task_errors(task, est, truth, setup.operator, setup.channels, setup.info.meta)
            row["tasks"][task] = {**{k: float(np.mean(v)) for k, v in errs.items()},
                                  "seconds_per_problem": seconds / len(idx)}
            shown.setdefault("tasks", {}).setdefault(task, {})[m.name] = est[0]
        if row["tasks"]:
            row["task_samples"] = m.task_samples
        row["costs"] = m.costs  # one-off costs, kept with the rows (a resumed run may not pay them again)
        rows[m.name] = row
        if done is not None:
            done(rows, shown)
    return {"rows": {m.name: rows[m.name] for m in methods}, "_fields": shown}


def _mean_std(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def _aggregate(per_seed: list[dict]):
    """Leaves that are numbers across seeds -> {mean, std, n}; structure kept."""
    first = per_seed[0]
    if isinstance(first, dict):
        if set(first) >= {"median", "mean", "std", "min", "max", "n"}:  # a per-sample summary
            return _mean_std([s["mean"] for s in per_seed])
        return {k: _aggregate([s[k] for s in per_seed]) for k in first if all(k in s for s in per_seed)}
    return _mean_std(per_seed)


def reference_row(setup: Setup, fem: bool = False) -> dict:
    _, reference, _ = schema.read(setup.data, setup.splits["test"])
    return field_metrics(setup.info, setup.operator, reference, None, fem)


def compare(setup: Setup, names: list[str] | None, seeds: list[int], tasks=None, fem: bool = False,
            figures: bool = True) -> dict:
    """Run the methods ``names`` (None: every registered method that the runs and the problem
    allow) on every seed, on ``tasks`` (None: every task of the problem's metadata); returns the
    compare.json document."""
    from piddm_fem import baselines

    if not seeds:
        raise PiddmError("give at least one seed, e.g. --seeds 0 1 2")
    known = list(setup.info.meta["tasks"])
    tasks = known if tasks is None else list(tasks)
    bad = [t for t in tasks if t not in known]
    if bad:
        raise PiddmError(f"unknown task {bad[0]!r}; {setup.info.problem} has {', '.join(known)}")
    methods = baselines.build(names or default_methods(setup.students), setup, tasks, strict=names is not None)
    runs = [_seed_rows(setup, methods, seed, tasks, fem) for seed in seeds]
    rows = []
    for m in methods:
        per_seed = [r["rows"][m.name] for r in runs]
        row = {"method": m.name, "nfe": m.nfe, "can": list(m.can), "posterior_mean": m.posterior_mean,
               "task_samples": m.task_samples, "settings": m.settings,
               **{k: _aggregate([p[k] for p in per_seed]) for k in ("sample", "tasks") if k in per_seed[0]}}
        row["costs"] = m.costs or next((p["costs"] for p in per_seed if p.get("costs")), {})
        rows.append(row)
    doc = {"problem": setup.info.problem, "resolution": setup.info.resolution, "channels": setup.channels,
           "display_name": (getattr(setup.info, "meta", None) or {}).get("display_name", setup.info.problem),
           "data": str(setup.data), "teacher": str(setup.teacher_dir), "seeds": list(seeds),
           "tasks": list(tasks), "n_test": int(setup.splits["test"].size), "budget": asdict(setup.budget),
           "device": str(setup.device), "machine": machine(setup.device), "reference": reference_row(setup, fem), "methods": rows}
    shown = next((r["_fields"] for r in runs if "_fields" in r), None)
    if figures and setup.out_dir is not None and shown is not None:
        from piddm_fem.report import compare_figures, tradeoff_figure

        doc["figures"] = compare_figures(setup.out_dir, setup, shown)
        doc["figures"]["tradeoff"] = tradeoff_figure([doc], setup.out_dir / "tradeoff.png",
                                                     f"error against time ({doc['machine']})").name
    return doc


def _seed_rows(setup: Setup, methods: list[Method], seed: int, tasks, fem: bool) -> dict:
    """``run_seed``, kept method by method in OUT/rows_seed<k>.json (the rows) and
    rows_seed<k>.npz (the fields the figures show), both written atomically after each method,
    so that an interrupted comparison resumes at its first unfinished method. A saved row is
    reused for the same data, teacher and students (``made_from``), tasks, FEM check, budget and
    machine (timings of one table come from one machine), and the same method settings."""
    if setup.out_dir is None:
        return run_seed(setup, methods, seed, tasks, fem)
    key = {"made_from": made_from(setup), "tasks": list(tasks), "fem": fem, "budget": asdict(setup.budget),
           "machine": machine(setup.device)}
    return run_seed(setup, methods, seed, tasks, fem, done=_SavedSeed(setup.out_dir / f"rows_seed{seed}", key, methods))


class _SavedSeed:
    """The finished methods of one seed on disk: ``rows`` and ``shown`` as read back (the rows
    whose key and method settings match), and, called with (rows, shown), the writer of both,
    which keeps the saved rows and fields of methods not run this time."""

    def __init__(self, stem: Path, key: dict, methods: list[Method]):
        self.json, self.npz, self.key = stem.with_suffix(".json"), stem.with_suffix(".npz"), key
        self.settings = {m.name: json.loads(json.dumps(m.settings)) for m in methods}  # as saved
        self.other_rows, self.other_settings, self.other_arrays = {}, {}, {}
        self.rows, self.shown = {}, {}
        saved = json.loads(self.json.read_text()) if self.json.exists() else {}
        if saved.get("key") != key:
            return
        arrays = {}
        if self.npz.exists():
            with np.load(self.npz) as f:
                arrays = {name: f[name] for name in f.files}  # "samples/<method>", "tasks/<task>/<method>"
        for name, row in saved["rows"].items():
            if name not in self.settings:
                self.other_rows[name], self.other_settings[name] = row, saved["settings"].get(name)
            elif saved["settings"].get(name) == self.settings[name]:
                self.rows[name] = row
        for name, x in arrays.items():
            *where, method = name.split("/")
            if method in self.rows:
                leaf = self.shown
                for part in where:
                    leaf = leaf.setdefault(part, {})
                leaf[method] = x
            elif method in self.other_rows:
                self.other_arrays[name] = x

    def __call__(self, rows: dict, shown: dict) -> None:
        doc = {"key": self.key, "settings": {**self.other_settings, **{n: self.settings[n] for n in rows}},
               "rows": {**self.other_rows, **rows}}
        arrays = dict(self.other_arrays)
        arrays.update({f"samples/{n}": x for n, x in shown.get("samples", {}).items()})
        arrays.update({f"tasks/{t}/{n}": x for t, per in shown.get("tasks", {}).items() for n, x in per.items()})
        tmp = self.npz.with_name(self.npz.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(self.npz)
        write_atomic(self.json, json.dumps(doc))


def make_budget(teacher_dir, quick: bool = False, **overrides) -> Budget:
    """The default (or ``quick``) budget with ``overrides`` (None leaves a field alone); the FNO
    gets the teacher's recorded training seconds unless told otherwise."""
    budget = QUICK if quick else Budget()
    seconds = checkpoint.load(teacher_dir, kind="teacher").get("train_seconds")
    if not quick and seconds:
        budget = replace(budget, fno_seconds=float(seconds))
    return replace(budget, **{k: v for k, v in overrides.items() if v is not None})


def default_methods(students: dict) -> list[str]:
    """Every registered method that the given runs allow (the student rows need their student)."""
    from piddm_fem.baselines import METHODS

    needs = {"PIDDM-1": "PIDDM", "PIDDM-ref": "PIDDM", "lambda=0": "lambda=0"}
    return [n for n in METHODS if n not in needs or needs[n] in students]
