"""Dataset generation: seeded coefficient draws, Firedrake solves, resumable atomic HDF5 files.

Sample i depends only on (seed, i). The pending samples go in rounds of ``ROUND_PER_RANK`` per
rank; rank 0 writes each round with one write per dataset. Under ``mpiexec -n K`` each rank solves
its share of a round on its own serial mesh and sends it to rank 0 without waiting: the other ranks
run up to one round ahead, so rank 0's writes overlap their solves, and rank 0 (which also solves)
takes a smaller share, sized from the measured solve and write times. Who solves a sample does not
change it, so the file is identical to a K = 1 run. The file stays ``<out>.partial`` until every
sample is done (solved or failed with its reason) and rank 0 holds ``<out>.lock`` meanwhile.
Ctrl-C (or SIGTERM) lets the solves in flight finish and starts no new one; every finished sample
is written for ``--resume`` (also the finished part of a round cut short), and no sample is stored
as failed because of the interrupt. A round's fields are flushed before its statuses, and
``--resume`` re-checks the samples of the last round before trusting them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

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
             overwrite: bool = False, show_progress: bool = True, force: bool = False,
             float32: bool = False) -> dict:
    """Write ``out``; returns counts {"ok", "failed", "solved_now"} and "seconds", the wall time of
    the solve-and-write loop (meshes built), on rank 0; {} elsewhere. ``force`` skips the memory
    guard; ``float32`` stores the (float64) solutions rounded to float32."""
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
                dtype = "f4" if float32 else "f8"
                f = stack.enter_context(schema.open_partial(out, info, dtype) if resume else
                                        schema.create(out, info, overwrite=overwrite, dtype=dtype))
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
        t0 = time.perf_counter()
        step = size * ROUND_PER_RANK
        rounds = [pending[start:start + step] for start in range(0, len(pending), step)]
        if rank == 0:
            def report(results):
                bar.update(task, advance=len(results),
                           status=f"last: {results[-1][2]['reason']}" if results else "")

            stopped = _lead(comm, f, disc, seed, rounds, report)
        else:
            stopped = _follow(comm, disc, seed, rounds)
        if comm.allreduce(int(stopped or interrupt.requested())):
            raise KeyboardInterrupt
        if rank != 0:
            return {}
        seconds = time.perf_counter() - t0
        status = f["status"][:]
        schema.write_operator(None, extract_operator(problem, S), h5file=f)
        if interrupt.requested():  # keep the partial file: --resume only renames it
            raise KeyboardInterrupt
        schema.finalize(out, f)
        return {"ok": int((status == schema.STATUS_OK).sum()),
                "failed": int((status == schema.STATUS_FAILED).sum()), "solved_now": len(pending),
                "seconds": seconds}


F32_RESIDUAL = 1e-3  # bound on the relative residual of a solution rounded to float32 (1.5e-5 at S = 64, ~S^2)
ROUND_PER_RANK = 8  # samples per rank and round: rank 0 writes (and flushes) once per round
_RESULTS, _PLAN = 71, 72  # message tags: a follower's round; the leader's word after a round


def _recv(comm, source: int, tag: int):
    """``comm.recv`` that sleeps while it waits instead of spinning in MPI's progress loop: on a
    machine shared with other jobs (or more ranks than cores) a spinning rank takes the CPU from
    the ranks that are solving. Costs at most a millisecond per round."""
    while not comm.iprobe(source=source, tag=tag):
        time.sleep(0.001)
    return comm.recv(source=source, tag=tag)


def _solve(disc, seed: int, indices, done: list) -> float:
    """Solve ``indices`` in order, appending (index, fields or None, info) to ``done``, until an
    interrupt is requested; returns the seconds spent. A solve cut short by a second Ctrl-C is
    not a failure: it is not appended and its sample stays pending."""
    t0 = time.perf_counter()
    for index in indices:
        if interrupt.requested():
            break
        fields, sinfo = solve_sample(disc, seed, index)
        if fields is not None or not interrupt.requested():
            done.append((int(index), fields, sinfo))
    return time.perf_counter() - t0


def _share(chunk, lead: float, rank: int, size: int):
    """Rank ``rank``'s samples of a round: rank 0 the first ``lead`` fraction (it also writes),
    the other ranks the rest, dealt out in turn."""
    if size == 1:
        return chunk
    n0 = min(len(chunk), max(0, round(lead * len(chunk))))
    return chunk[:n0] if rank == 0 else chunk[n0 + rank - 1::size - 1]


def _lead(comm, f, disc, seed: int, rounds, report) -> bool:
    """Rank 0: per round, solve its share, receive the other ranks' (solved meanwhile: they run
    up to a round ahead, so the write overlaps their solves), write the round. After round t it
    tells them whether to stop after round t + 1 and rank 0's share of round t + 2, sized so that
    its solves plus the writes take as long as theirs. Returns whether an interrupt stopped it."""
    size, stop, plan = comm.size, [], {}  # plan: round -> rank 0's share, sent two rounds ahead
    solve_rate = [0.0, 0, 0.0, 0]  # rank 0's seconds and samples, the others' likewise
    write_time, written, sends = 0.0, 0, []
    for t, chunk in enumerate(rounds):
        if t >= 2 and stop[t - 2]:
            break
        done = []
        try:
            seconds = _solve(disc, seed, _share(chunk, plan.get(t, 1.0 / size), 0, size), done)
            flags = [interrupt.requested()]
            solve_rate[:2] = solve_rate[0] + seconds, solve_rate[1] + len(done)
            for r in range(1, size):
                results, flag, seconds = _recv(comm, r, _RESULTS)
                done += results
                flags.append(flag)
                solve_rate[2:] = solve_rate[2] + seconds, solve_rate[3] + len(results)
        finally:  # every finished sample is kept, whatever stops the round
            t0 = time.perf_counter()
            _write_round(f, done)
            write_time, written = write_time + time.perf_counter() - t0, written + len(done)
        report(done)
        stop.append(any(flags))
        if size > 1 and t + 2 < len(rounds) and not any(stop[:-1]):
            plan[t + 2] = 1.0 / size
            if solve_rate[1] and solve_rate[3] and written:
                s0, s1 = solve_rate[0] / solve_rate[1], solve_rate[2] / solve_rate[3] / (size - 1)
                w = write_time / written  # per sample: rank 0 writes all the round's samples
                plan[t + 2] = max(0.0, (s1 - w) / (s0 + s1))  # n0 s0 + N w = (N - n0) s1
            sends += [comm.isend((stop[-1], plan[t + 2]), dest=r, tag=_PLAN) for r in range(1, size)]
    for request in sends:
        request.wait()
    return any(stop)


def _follow(comm, disc, seed: int, rounds) -> bool:
    """Rank > 0: solve its share of each round and send it to rank 0 without waiting for the
    write; before round t (t >= 2) read rank 0's word after round t - 2 (stop, rank 0's share)."""
    sends, stopped, lead = [], False, 1.0 / comm.size
    for t, chunk in enumerate(rounds):
        if t >= 2:
            stopped, lead = _recv(comm, 0, _PLAN)
            if stopped:
                break
        done = []
        seconds = _solve(disc, seed, _share(chunk, lead, comm.rank, comm.size), done)
        sends.append(comm.isend((done, interrupt.requested(), seconds), dest=0, tag=_RESULTS))
        if len(sends) > 2:  # rank 0 has received all but the last two rounds
            sends.pop(0).wait()
    for request in sends:
        request.wait()
    return stopped


def _index(indices):
    """A slice for consecutive indices (one HDF5 hyperslab), else the sorted list."""
    if indices[-1] - indices[0] + 1 == len(indices):
        return slice(indices[0], indices[-1] + 1)
    return list(indices)


def _write_round(f, results) -> None:
    """Store a round of (index, fields or None, info) in one write per dataset: fields and solver
    info first, flushed, then the statuses (and the round's indices, for ``_recheck``), flushed. A
    kill in between leaves the samples pending, never ok with missing fields."""
    if not results:
        return
    results = sorted(results, key=lambda r: r[0])
    solved = [r for r in results if r[1] is not None]
    if solved:
        f["fields"][_index([r[0] for r in solved])] = np.stack([r[1] for r in solved])
    where = _index([r[0] for r in results])
    for key in ("iterations", "residual_norm", "time", "reason"):
        f["solver_info"][key][where] = [r[2][key] for r in results]
    f.flush()
    f["status"][where] = [schema.STATUS_OK if r[1] is not None else schema.STATUS_FAILED for r in results]
    f.attrs["last_round"] = np.array([r[0] for r in results], dtype=np.int64)
    f.flush()


def _recheck(f, disc: DiscreteProblem, tol: float = 1e-8, chunk: int = 256) -> None:
    """Before ``--resume`` trusts a partial file: every ok sample must be finite with a stored
    residual within ``tol``, and the samples of the last round written before the interruption
    must have that residual when recomputed (float64 files), or one within float32 round-off
    (``F32_RESIDUAL``, float32 files). A sample that fails goes back to pending."""
    status = f["status"][:]
    stored = f["solver_info"]["residual_norm"][:]
    last = {int(i) for i in f.attrs.get("last_round", [])}
    rounded = f["fields"].dtype == np.float32
    bad = []
    for start in range(0, status.size, chunk):
        block = f["fields"][start:start + chunk].astype(np.float64, copy=False)
        for k in np.flatnonzero(status[start:start + chunk] == schema.STATUS_OK):
            index = start + int(k)
            good = np.isfinite(block[k]).all() and stored[index] <= tol
            if good and index in last:
                residual = disc.relative_residual(block[k])
                good = (residual <= F32_RESIDUAL if rounded else
                        residual <= tol and np.isclose(residual, stored[index], rtol=1e-3, atol=1e-15))
            if not good:
                bad.append(index)
    for index in bad:
        f["status"][index] = schema.STATUS_PENDING
    if bad:
        f.flush()
        print(f"--resume: {len(bad)} sample(s) marked ok did not verify (first: {bad[0]}); "
              "solving them again", file=sys.stderr)
