"""Dataset generation: seeded coefficient draws, Firedrake solves, resumable atomic HDF5 files.

Sample i depends only on (seed, i). Under ``mpiexec -n K`` the pending samples are dealt out to
the ranks in rounds; each rank solves on its own serial mesh and rank 0 writes, so the file is
identical to a K = 1 run. The file stays ``<out>.partial`` until every sample is done (solved or
failed with its reason); Ctrl-C keeps every finished sample for ``--resume``.
"""

from __future__ import annotations

import contextlib

import firedrake as fd
import numpy as np

from piddm_fem import schema
from piddm_fem.errors import PiddmError
from piddm_fem.progress import progress_bar
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.export import extract_operator


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def solve_sample(disc: DiscreteProblem, seed: int, index: int):
    """(fields [C, S, S] or None, solver info) for sample ``index`` of seed ``seed``."""
    coefficients = disc.problem.sample_coefficients(disc.S, sample_rng(seed, index))
    return disc.solve(coefficients)


def dataset_info(problem, n_samples: int, S: int, seed: int) -> schema.DatasetInfo:
    return schema.DatasetInfo(problem=problem.name, channels=list(problem.channels), resolution=S,
                              n_samples=n_samples, seed=seed, params=dict(problem.params),
                              solver_parameters=problem.solver_parameters,
                              boundary=list(problem.boundary))


def generate(problem, n_samples: int, S: int, seed: int, out, *, resume: bool = False,
             overwrite: bool = False, show_progress: bool = True) -> dict:
    """Write ``out``; returns counts {"ok", "failed", "solved_now"} (on rank 0; {} elsewhere)."""
    comm = fd.COMM_WORLD
    rank, size = comm.rank, comm.size
    if n_samples < 1:
        raise PiddmError(f"--n-samples {n_samples}: ask for at least one sample")
    info = dataset_info(problem, n_samples, S, seed)
    f, pending, error = None, None, None
    if rank == 0:
        try:
            f = schema.open_partial(out, info) if resume else schema.create(out, info, overwrite=overwrite)
            pending = np.flatnonzero(f["status"][:] == schema.STATUS_PENDING)
        except PiddmError as exc:
            error = str(exc)
    error = comm.bcast(error, root=0)
    if error:
        raise PiddmError(error)
    pending = comm.bcast(pending, root=0)
    disc = DiscreteProblem(problem, S)
    bar = progress_bar(disable=not show_progress) if rank == 0 else contextlib.nullcontext()
    try:
        with bar:
            task = bar.add_task(f"{problem.name} S={S}", total=n_samples,
                                completed=n_samples - len(pending), status="") if rank == 0 else None
            for start in range(0, len(pending), size):
                chunk = pending[start:start + size]
                mine = (int(chunk[rank]), *solve_sample(disc, seed, chunk[rank])) if rank < len(chunk) else None
                results = comm.gather(mine, root=0)
                if rank == 0:
                    for index, fields, sinfo in (r for r in results if r is not None):
                        _write_sample(f, index, fields, sinfo)
                    f.flush()
                    bar.update(task, advance=len(chunk), status=f"last: {sinfo['reason']}")
        if rank != 0:
            return {}
        status = f["status"][:]
        schema.write_operator(None, extract_operator(problem, S), h5file=f)
        schema.finalize(out, f)
        f = None
        return {"ok": int((status == schema.STATUS_OK).sum()),
                "failed": int((status == schema.STATUS_FAILED).sum()), "solved_now": len(pending)}
    finally:
        if f is not None:
            f.close()


def _write_sample(f, index: int, fields, sinfo: dict) -> None:
    if fields is not None:
        f["fields"][index] = fields
    f["status"][index] = schema.STATUS_OK if fields is not None else schema.STATUS_FAILED
    for key in ("iterations", "residual_norm", "time", "reason"):
        f["solver_info"][key][index] = sinfo[key]
