"""Dataset generation: seeded coefficient draws, Firedrake solves, resumable atomic HDF5 files.

Sample i depends only on (seed, i). Under ``mpiexec -n K`` the pending samples are dealt out to
the ranks in rounds; each rank solves on its own serial mesh and rank 0 writes, so the file is
identical to a K = 1 run. The file stays ``<out>.partial`` until every sample is done (solved or
failed with its reason) and rank 0 holds ``<out>.lock`` meanwhile. Ctrl-C (or SIGTERM) lets the
solves in flight finish, keeps every finished sample for ``--resume`` and never stores a sample
as failed because of the interrupt. A round's fields are flushed before its statuses, and
``--resume`` re-checks the samples of the last round before trusting them.
"""

from __future__ import annotations

import contextlib
import os
import sys

import firedrake as fd
import numpy as np

from piddm_fem import interrupt, schema
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


BYTES_PER_DOF = 3000  # peak memory of a Q1 solve with MUMPS LU, measured 2.2-2.4 kB at S = 257..1025


def available_memory() -> int:
    """Bytes the system can give a new job now (MemAvailable; free pages where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(S: int, force: bool = False, processes: int = 1) -> None:
    """Refuse (unless ``force``) a resolution whose solves would not fit in the available memory."""
    need, have = processes * BYTES_PER_DOF * S * S, available_memory()
    if need > have and not force:
        raise PiddmError(f"--res {S} needs about {need / 2**30:.1f} GiB for the solve, more than the "
                         f"{have / 2**30:.1f} GiB available; use a smaller --res or pass --force")


def dataset_info(problem, n_samples: int, S: int, seed: int) -> schema.DatasetInfo:
    return schema.DatasetInfo(problem=problem.name, channels=list(problem.channels), resolution=S,
                              n_samples=n_samples, seed=seed, params=dict(problem.params),
                              solver_parameters=problem.solver_parameters,
                              boundary=list(problem.boundary), meta=problem.metadata())


def generate(problem, n_samples: int, S: int, seed: int, out, *, resume: bool = False,
             overwrite: bool = False, show_progress: bool = True, force: bool = False) -> dict:
    """Write ``out``; returns counts {"ok", "failed", "solved_now"} (on rank 0; {} elsewhere).
    ``force`` skips the memory guard."""
    comm = fd.COMM_WORLD
    rank, size = comm.rank, comm.size
    if n_samples < 1:
        raise PiddmError(f"--n-samples {n_samples}: ask for at least one sample")
    check_memory(S, force, processes=size)
    info = dataset_info(problem, n_samples, S, seed)
    with contextlib.ExitStack() as stack:
        f, pending, error = None, None, None
        if rank == 0:
            try:
                stack.enter_context(schema.exclusive(out))
                f = stack.enter_context(schema.open_partial(out, info) if resume else
                                        schema.create(out, info, overwrite=overwrite))
            except PiddmError as exc:
                error = str(exc)
        error = comm.bcast(error, root=0)
        if error:
            raise PiddmError(error)
        stack.enter_context(interrupt.deferred())
        disc = DiscreteProblem(problem, S)
        if rank == 0:
            if resume:
                _recheck(f, disc)
            pending = np.flatnonzero(f["status"][:] == schema.STATUS_PENDING)
        pending = comm.bcast(pending, root=0)
        bar = stack.enter_context(progress_bar(disable=not show_progress)) if rank == 0 else None
        task = bar.add_task(f"{problem.name} S={S}", total=n_samples,
                            completed=n_samples - len(pending), status="") if rank == 0 else None
        for start in range(0, len(pending), size):
            chunk = pending[start:start + size]
            mine = None
            if rank < len(chunk):
                fields, sinfo = solve_sample(disc, seed, chunk[rank])
                # a solve cut short by a second Ctrl-C is not a failure: its sample stays pending
                if fields is not None or not interrupt.requested():
                    mine = (int(chunk[rank]), fields, sinfo)
            results = [r for r in comm.gather(mine, root=0) or () if r is not None]
            if rank == 0:
                _write_round(f, results)
                bar.update(task, advance=len(results),
                           status=f"last: {results[-1][2]['reason']}" if results else "")
            if comm.allreduce(int(interrupt.requested())):
                raise KeyboardInterrupt
        if rank != 0:
            return {}
        status = f["status"][:]
        schema.write_operator(None, extract_operator(problem, S), h5file=f)
        if interrupt.requested():  # keep the partial file: --resume only renames it
            raise KeyboardInterrupt
        schema.finalize(out, f)
        return {"ok": int((status == schema.STATUS_OK).sum()),
                "failed": int((status == schema.STATUS_FAILED).sum()), "solved_now": len(pending)}


def _write_round(f, results) -> None:
    """Store a round of (index, fields or None, info): fields and solver info first, flushed,
    then the statuses (and the round's indices, for ``_recheck``), flushed. A kill in
    between leaves the samples pending, never ok with missing fields."""
    if not results:
        return
    for index, fields, sinfo in results:
        if fields is not None:
            f["fields"][index] = fields
        for key in ("iterations", "residual_norm", "time", "reason"):
            f["solver_info"][key][index] = sinfo[key]
    f.flush()
    for index, fields, _ in results:
        f["status"][index] = schema.STATUS_OK if fields is not None else schema.STATUS_FAILED
    f.attrs["last_round"] = np.array([r[0] for r in results], dtype=np.int64)
    f.flush()


def _recheck(f, disc: DiscreteProblem, tol: float = 1e-8, chunk: int = 256) -> None:
    """Before ``--resume`` trusts a partial file: every ok sample must be finite with a stored
    residual within ``tol``, and the samples of the last round written before the interruption
    must have that residual when recomputed. A sample that fails goes back to pending."""
    status = f["status"][:]
    stored = f["solver_info"]["residual_norm"][:]
    last = {int(i) for i in f.attrs.get("last_round", [])}
    bad = []
    for start in range(0, status.size, chunk):
        block = f["fields"][start:start + chunk]
        for k in np.flatnonzero(status[start:start + chunk] == schema.STATUS_OK):
            index = start + int(k)
            good = np.isfinite(block[k]).all() and stored[index] <= tol
            if good and index in last:
                residual = disc.relative_residual(block[k])
                good = residual <= tol and np.isclose(residual, stored[index], rtol=1e-3, atol=1e-15)
            if not good:
                bad.append(index)
    for index in bad:
        f["status"][index] = schema.STATUS_PENDING
    if bad:
        f.flush()
        print(f"--resume: {len(bad)} sample(s) marked ok did not verify (first: {bad[0]}); "
              "solving them again", file=sys.stderr)
