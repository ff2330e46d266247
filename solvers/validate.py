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

    The operator stored in the file is used when it matches the file's problem and grid;
    otherwise (e.g. model samples) it is extracted afresh."""
    info, fields, status = schema.read(path)
    problem = get_problem(info.problem, **info.params)
    if list(problem.channels) != info.channels:
        raise PiddmError(f"{path}: channels {info.channels} do not match problem {info.problem} "
                         f"{list(problem.channels)}; write the file with the problem's channels")
    disc = DiscreteProblem(problem, info.resolution)
    op = schema.read_operator(path)
    if op is None or (op["problem"], op["params"], op["resolution"]) != (
            info.problem, info.params, info.resolution):
        op = extract_operator(problem, info.resolution)
    return info, fields, status, disc, op


def fem_residuals(disc: DiscreteProblem, fields: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Relative FEM residual per sample (NaN for samples whose status is not ok)."""
    out = np.full(fields.shape[0], np.nan)
    for n in np.flatnonzero(status == schema.STATUS_OK):
        out[n] = disc.relative_residual(fields[n])
    return out
