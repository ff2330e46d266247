"""Dataset generation throughput with K = 1 and K = 2 MPI ranks at S = 64: the steady state (both
ranks hold their meshes and compiled forms: the solve-and-write loop of a second ``generate`` in
the same processes) and, as before, the whole ``piddm generate`` command with start-up; their
ratios side by side, and the time per solve split into assembly and linear solve (one rank).

    python benchmarks/generate_throughput.py [--res 64] [--n 400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from piddm_fem.checks import check_range
from piddm_fem.errors import script_main
from piddm_fem.solvers import get_problem, mpiexec_env  # first: keeps PETSc off our argv

import firedrake as fd  # noqa: E402
from piddm_fem.solvers import generate as generate_module  # noqa: E402
from piddm_fem.solvers.discrete import DiscreteProblem  # noqa: E402
from piddm_fem.solvers.generate import generate, sample_rng  # noqa: E402


def run_command(ranks: int, n: int, S: int, out: Path) -> float:
    """Wall seconds of ``mpiexec -n ranks piddm generate``, start-up included."""
    piddm = str(Path(sys.executable).with_name("piddm"))
    cmd = ["mpiexec", "-n", str(ranks), piddm, "generate", "darcy", "-n", str(n), "--res", str(S),
           "--out", str(out), "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=mpiexec_env(), capture_output=True)
    return time.perf_counter() - t0


def run_steady(ranks: int, n: int, S: int, out: Path) -> dict:
    """The solve-and-write loop for n samples on ``ranks`` ranks after a warm-up: its seconds and
    each rank's time in solves (wall and CPU), writes and waits."""
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, __file__, "--worker", "--res", str(S),
           "--n", str(n), "--out", str(out)]
    proc = subprocess.run(cmd, check=True, env=mpiexec_env(), capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed(name: str, fn, spent: dict):
    """``fn`` accumulating its wall and CPU seconds into ``spent``."""
    def wrapper(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
            spent[name + " cpu"] = spent.get(name + " cpu", 0.0) + time.process_time() - c0
    return wrapper


def worker(n: int, S: int, out: Path) -> None:
    """Under mpiexec: a warm-up generate (forms compiled, caches filled), then the timed one."""
    problem = get_problem("darcy")
    generate(problem, 4 * fd.COMM_WORLD.size, S, 1, out, overwrite=True, show_progress=False)
    spent = {}
    for name in ("_solve", "_write_round", "_recv"):
        setattr(generate_module, name, timed(name, getattr(generate_module, name), spent))
    counts = generate(problem, n, S, 0, out, overwrite=True, show_progress=False)
    ranks = fd.COMM_WORLD.gather(spent, root=0)
    if counts:
        print(json.dumps({"seconds": counts["seconds"], "ranks": ranks}))


def split_times(S: int, n: int = 5) -> tuple[float, float]:
    """Mean seconds per sample for assembling the Jacobian + residual, and for the LU solve."""
    problem = get_problem("darcy")
    disc = DiscreteProblem(problem, S)
    u = disc.fields["u"]
    J = fd.derivative(disc.F, u)
    bc0 = fd.DirichletBC(disc.V, 0.0, "on_boundary")  # Newton update from u = 0 with g = 0
    t_asm = t_solve = 0.0
    for i in range(-1, n):  # sample -1 warms the form compiler's cache and is not timed
        disc.gridmap.from_grid(problem.sample_coefficients(S, sample_rng(0, max(i, 0)))["a"], disc.fields["a"])
        t0 = time.perf_counter()
        A = fd.assemble(J, bcs=bc0)
        b = fd.assemble(-disc.F, bcs=bc0)
        t1 = time.perf_counter()
        du = fd.Function(disc.V)
        fd.solve(A, du, b, solver_parameters={"ksp_type": "preonly", "pc_type": "lu",
                                              "pc_factor_mat_solver_type": "mumps"})
        t2 = time.perf_counter()
        if i >= 0:
            t_asm, t_solve = t_asm + t1 - t0, t_solve + t2 - t1
    return t_asm / n, t_solve / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    check_range("--n", args.n, "[1, inf)")
    if args.worker:
        return worker(args.n, args.res, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.h5"
        run_command(1, 2, args.res, out)  # warm the kernel cache on disk
        runs = {k: run_steady(k, args.n, args.res, out) for k in (1, 2)}
        command = {k: run_command(k, args.n, args.res, out) for k in (1, 2)}
    steady = {k: run["seconds"] for k, run in runs.items()}
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"Darcy S={args.res}, {args.n} samples, {os.cpu_count()} cores, load average {load}")
    print("  ranks  steady state (loop)        piddm generate (start-up included)")
    for k in (1, 2):
        print(f"  K={k}   {steady[k]:6.1f} s {args.n / steady[k]:6.2f} samples/s   "
              f"{command[k]:6.1f} s {args.n / command[k]:6.2f} samples/s")
        for r, spent in enumerate(runs[k]["ranks"]):
            print(f"         rank {r}: solving {spent.get('_solve', 0):5.1f} s (CPU {spent.get('_solve cpu', 0):5.1f} s), "
                  f"writing {spent.get('_write_round', 0):4.1f} s, waiting {spent.get('_recv', 0):4.1f} s")
    print(f"  ratio K=2 / K=1: steady {steady[1] / steady[2]:.2f}x, with start-up {command[1] / command[2]:.2f}x")
    t_asm, t_solve = split_times(args.res)
    print(f"  per solve: assembly {1e3 * t_asm:.1f} ms, LU solve {1e3 * t_solve:.1f} ms")


if __name__ == "__main__":
    script_main(main)
