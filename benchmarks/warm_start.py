"""The student as a warm start for Firedrake's solvers, and as a sampler against the FEM solve.

    python benchmarks/warm_start.py --student runs/rd/student --student demo_out/student [--n 32]
    piddm bench warm-start -- --student DIR ...

For each student (its problem and grid come from the checkpoint), ``--n`` held-out coefficient
draws (seed 10000; the datasets use seed 0) are solved with each solver from three starts:
zero, the student (one network call, ``--restarts`` 1) and the student followed by Algorithm 3's
forward task (``--steps`` Adam steps from the same eps). Every solve stops at the same test,
||F(u_k)|| <= 1e-12 ||F(0)|| (DiscreteProblem.solve). Printed: Newton and linear iterations,
solve seconds, and seconds with the student's own time, as median [min, max]; then the time per
field of ``Surrogate.sample`` (batch 64, Functions included) against one direct FEM solve.
Linear problems skip the direct solver (one LU factorisation whatever the start).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from piddm_fem.checks import check_range
from piddm_fem.errors import script_main
from piddm_fem.interrupt import write_atomic
from piddm_fem.metrics import summarize
from piddm_fem.solvers.generate import sample_rng
from piddm_fem.solvers.surrogate import Surrogate

HELD_OUT_SEED = 10_000


def fmt(s: dict, digits: str = ".0f") -> str:
    return f"{s['median']:{digits}} [{s['min']:{digits}}, {s['max']:{digits}}]"


def warm_start_rows(surrogate: Surrogate, solvers, n: int, steps: int, restarts: int) -> list[dict]:
    disc, problem = surrogate.disc, surrogate.problem
    draws = [problem.sample_coefficients(disc.S, sample_rng(HELD_OUT_SEED, i)) for i in range(n)]
    surrogate.predict(draws[0])  # warm-up: the first call allocates and compiles
    guesses = {"zero": [(None, 0.0)] * n, "student": [], f"student+{steps}": []}
    for a in draws:
        for label, k in (("student", 0), (f"student+{steps}", steps)):
            t0 = time.perf_counter()
            guess = surrogate.predict(a, steps=k, restarts=restarts)
            guesses[label].append((guess, time.perf_counter() - t0))
    rows = []
    for solver in solvers:
        if problem.linear and solver == "direct":
            continue
        for label, starts in guesses.items():
            info = [disc.solve(a, initial_guess=g, solver=solver)[1] | {"student": t}
                    for a, (g, t) in zip(draws, starts)]
            failed = [i["reason"] for i in info if not np.isfinite(i["residual_norm"])]
            rows.append({"problem": problem.name, "S": disc.S, "solver": solver, "start": label,
                         "n": n, "failed": failed,
                         "newton": summarize([i["newton_iterations"] for i in info]),
                         "linear": summarize([i["iterations"] for i in info]),
                         "solve_seconds": summarize([i["time"] for i in info]),
                         "student_seconds": summarize([i["student"] for i in info]),
                         "total_seconds": summarize([i["time"] + i["student"] for i in info])})
    return rows


def sampling_row(surrogate: Surrogate, n: int = 64, solves: int = 8) -> dict:
    surrogate.sample(4)  # warm-up: first-call allocations
    t0 = time.perf_counter()
    surrogate.sample(n, batch=n)
    per_field = (time.perf_counter() - t0) / n
    disc = surrogate.disc
    times = [disc.solve(disc.problem.sample_coefficients(disc.S, sample_rng(HELD_OUT_SEED, i)))[1]["time"]
             for i in range(solves + 1)][1:]  # the first solve compiles and factorises symbolically
    fem = float(np.median(times))
    return {"problem": disc.problem.name, "S": disc.S, "sample_seconds_per_field": per_field,
            "fem_seconds_per_solve": fem, "speedup": fem / per_field}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, action="append", required=True, help="student run directory (repeatable)")
    parser.add_argument("--n", type=int, default=32, help="held-out coefficient draws")
    parser.add_argument("--steps", type=int, default=200, help="forward-task steps of the third start")
    parser.add_argument("--restarts", type=int, default=1, help="eps per draw (1: one network call)")
    parser.add_argument("--solver", action="append", choices=("direct", "krylov"), help="default: both")
    parser.add_argument("--sampling-only", action="store_true",
                        help="time Surrogate.sample against the FEM solve only (e.g. an untrained S = 64 student)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    args = parser.parse_args()
    check_range("--n", args.n, "[1, inf)")
    check_range("--restarts", args.restarts, "[1, inf)")
    import torch

    torch.set_num_threads(1)  # the FEM side runs on one core too
    rows, speed = [], []
    for path in args.student:
        surrogate = Surrogate.load(path, device="cpu")
        if not args.sampling_only:
            rows += warm_start_rows(surrogate, args.solver or ["direct", "krylov"], args.n, args.steps,
                                    args.restarts)
        speed.append(sampling_row(surrogate))

    print(f"{'problem':>18} {'S':>3} {'solver':>6} {'start':>11} {'Newton':>12} {'linear':>14} "
          f"{'solve ms':>16} {'+student ms':>16} {'failed':>6}")
    for r in rows:
        ms = {k: {q: 1e3 * v for q, v in r[k].items()} for k in ("solve_seconds", "total_seconds")}
        print(f"{r['problem']:>18} {r['S']:>3} {r['solver']:>6} {r['start']:>11} {fmt(r['newton']):>12} "
              f"{fmt(r['linear']):>14} {fmt(ms['solve_seconds'], '.1f'):>16} "
              f"{fmt(ms['total_seconds'], '.1f'):>16} {len(r['failed']):>6}")
    for s in speed:
        print(f"Surrogate.sample {s['problem']} S={s['S']}: {1e3 * s['sample_seconds_per_field']:.2f} ms/field "
              f"(batch 64) vs FEM solve {1e3 * s['fem_seconds_per_solve']:.2f} ms: {s['speedup']:.1f}x")
    if args.json:
        write_atomic(args.json, json.dumps({"warm_start": rows, "sampling": speed}, indent=1))


if __name__ == "__main__":
    script_main(main)
