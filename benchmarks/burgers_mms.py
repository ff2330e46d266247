"""Burgers in space-time on a manufactured solution: L2 errors and rates of the Q1 solution.

u_e(x, t) = 0.5 sin(pi x) exp(-t) + 0.25 sin(2 pi x) cos(pi t): the source u_e,t + u_e u_e,x -
nu u_e,xx is added to the form (and, with SUPG, to its streamline term), u = 0 at x = 0 and 1,
u = u_e at t = 0 (the data side), nothing at t = 1. Prints S, the L2 error and the rate for each
streamline-diffusion weight delta (docs/burgers.md).

    python benchmarks/burgers_mms.py [--delta 0 0.5] [--res 9 17 33 65 129]
"""

from __future__ import annotations

import argparse

import numpy as np

import piddm_fem  # noqa: F401  (before Firedrake: PETSc must not read our arguments)
import firedrake as fd

from piddm_fem.errors import script_main
from piddm_fem.solvers import get_problem
from piddm_fem.solvers.discrete import DiscreteProblem


def mms_error(delta: float, S: int) -> float:
    problem = get_problem("burgers", delta=delta)
    disc = DiscreteProblem(problem, S)
    x, t = fd.SpatialCoordinate(disc.mesh)
    exact = 0.5 * fd.sin(fd.pi * x) * fd.exp(-t) + 0.25 * fd.sin(2 * fd.pi * x) * fd.cos(fd.pi * t)
    u, v = disc.fields["u"], disc.v
    source = exact.dx(1) + exact * exact.dx(0) - problem.params["nu"] * exact.dx(0).dx(0)
    tau = delta * fd.CellDiameter(disc.mesh) / np.sqrt(2.0)
    F = disc.F - source * (v + tau * (v.dx(1) + u * v.dx(0))) * fd.dx
    disc.g_data.interpolate(exact)
    u.assign(0.0)
    fd.solve(F == 0, u, bcs=disc.bcs, solver_parameters={**problem.parameters_for("direct"),
                                                          "snes_atol": 1e-12, "snes_rtol": 1e-12})
    return float(fd.sqrt(fd.assemble((u - exact) ** 2 * fd.dx(degree=6))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delta", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--res", type=int, nargs="+", default=[9, 17, 33, 65, 129])
    args = p.parse_args()
    for delta in args.delta:
        errors = [mms_error(delta, S) for S in args.res]
        print(f"delta = {delta:g}")
        for k, (S, e) in enumerate(zip(args.res, errors)):
            rate = "" if k == 0 else f"{np.log2(errors[k - 1] / e):.2f}"
            print(f"  S = {S:4d}  L2 error {e:.3e}  rate {rate}")


if __name__ == "__main__":
    script_main(main)
