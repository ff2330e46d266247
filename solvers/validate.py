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
