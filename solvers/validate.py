"""FEM residual of any file in the dataset schema (solver output or model samples)."""

from __future__ import annotations

import numpy as np

from piddm_fem import schema
from piddm_fem.errors import PiddmError
from piddm_fem.solvers import get_problem
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.export import extract_operator


def load_for_validation(path):
    """(info, fields, status, discrete problem, operator arrays) for a dataset file.

    The operator stored in the file is used; a file without one (e.g. model samples) gets it
    extracted afresh."""
    info, fields, status = schema.read(path)
    problem = get_problem(info.problem, **info.params)
    if list(problem.channels) != info.channels:
        raise PiddmError(f"{path}: channels {info.channels} do not match problem {info.problem} "
                         f"{list(problem.channels)}; write the file with the problem's channels")
    disc = DiscreteProblem(problem, info.resolution)
    op = schema.read_operator(path)  # schema.read has matched a stored operator to the file
    if op is None:
        op = extract_operator(problem, info.resolution)
    return info, fields, status, disc, op


def fem_residuals(disc: DiscreteProblem, fields: np.ndarray, status: np.ndarray):
    """(relative FEM residual per sample [N], scaled residual vectors [N, S*S]); NaN for samples
    whose status is not ok."""
    relative = np.full(fields.shape[0], np.nan)
    scaled = np.full((fields.shape[0], disc.S * disc.S), np.nan)
    for n in np.flatnonzero(status == schema.STATUS_OK):
        relative[n] = disc.relative_residual(fields[n])
        scaled[n] = disc.scaled_residual(fields[n])
    return relative, scaled


DISAGREE = 1e-8  # torch vs FEM scaled residual, RMS relative to the load RMS (round-off: ~3e-14)


def validate_file(path, max_residual: float | None = None) -> dict:
    """The FEM residual of every sample of ``path`` beside the torch operator's, as the report
    that `piddm validate --json` writes: per sample ``index``, ``status`` (its code),
    ``status_name``, ``fem_residual``, ``torch_residual`` (None where the sample is not ok);
    ``summary`` (median and max over the ok samples, counts, ``disagree``: the samples where the
    two residuals differ by more than ``DISAGREE`` of the load); ``passed``: some sample is ok and
    none exceeds ``max_residual``."""
    import torch

    from piddm_fem.residual import ResidualOperator

    info, fields, status, disc, op = load_for_validation(path)
    fem, fem_scaled = fem_residuals(disc, fields, status)
    operator = ResidualOperator(op)
    ok = np.flatnonzero(np.isfinite(fem))
    fast, mismatch = np.full_like(fem, np.nan), np.zeros_like(fem)
    if ok.size:
        with torch.no_grad():
            x = torch.from_numpy(fields[ok])
            fast[ok] = operator.relative(x).numpy()
            diff = operator.scaled(x).flatten(1).numpy() - fem_scaled[ok]
            load = operator.load(x).flatten(1).square().mean(1).sqrt().numpy()
            mismatch[ok] = np.sqrt(np.mean(diff**2, axis=1)) / np.where(load > 0, load, 1.0)
    disagree = ok[mismatch[ok] > DISAGREE]
    median = float(np.median(fem[ok])) if ok.size else float("nan")
    worst = float(np.max(fem[ok])) if ok.size else float("nan")

    def number(v):
        return None if np.isnan(v) else float(v)

    return {"file": str(path), "problem": info.problem, "resolution": info.resolution,
            "source": info.source, "max_residual": max_residual,
            "passed": bool(ok.size > 0 and (max_residual is None or worst <= max_residual)),
            "summary": {"median": median, "max": worst, "n_ok": int(ok.size),
                        "n_samples": int(fields.shape[0]), "n_disagree": int(disagree.size),
                        "disagree": [int(n) for n in disagree]},
            "samples": [{"index": n, "status": int(status[n]), "status_name": schema.STATUS_NAMES[int(status[n])],
                         "fem_residual": number(fem[n]), "torch_residual": number(fast[n])}
                        for n in range(fields.shape[0])]}
