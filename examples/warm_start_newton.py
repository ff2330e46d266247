"""Newton on a nonlinear PDE, from zero and from the student's prediction.

    python examples/warm_start_newton.py --student runs/rd/student    # a reaction_diffusion student
    python examples/warm_start_newton.py --quick                      # trains a tiny one first

The PDE is -div(a grad u) + kappa u^3 = f (solvers/reaction_diffusion.py). Both solves stop at
the same test, ||F(u_k)|| <= 1e-12 ||F(0)||, so a better start can stop earlier; the student's
own time is printed beside the solve's.
"""

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # PETSc and Firedrake want one thread per rank

from piddm_fem.errors import script_main
from piddm_fem.solvers.discrete import STOP_RTOL  # piddm's solvers first: PETSc must not parse our options
from piddm_fem.solvers.generate import sample_rng
from piddm_fem.solvers.surrogate import Surrogate
from quickstart import example_arguments  # noqa: E402  (examples/quickstart.py, beside this file)

import firedrake as fd  # noqa: E402, I001


def main():
    args, student = example_arguments(__doc__, "reaction_diffusion", "warm_start_out",
                                      **{"--draws": (int, 3, "held-out coefficient draws")})

    surrogate = Surrogate.load(student, device="cpu")
    disc = surrogate.disc  # the student's problem on its grid: form, BCs, solvers
    surrogate.predict(disc.problem.sample_coefficients(disc.S, sample_rng(10_000, 0)))  # warm-up call
    print(f"{'draw':>4} {'start':>6} {'Newton':>6} {'linear':>6} {'solve s':>8} {'student s':>9}")
    for draw in range(args.draws):
        a = disc.problem.sample_coefficients(disc.S, sample_rng(10_000, draw))  # not in the data (seed 0)
        t0 = time.perf_counter()
        guess = surrogate.predict(a)  # one student call on the best of 4 restarts
        t_student = time.perf_counter() - t0
        for label, start, extra in (("zero", None, 0.0), ("warm", guess, t_student)):
            _, info = disc.solve(a, initial_guess=start)
            print(f"{draw:>4} {label:>6} {info['newton_iterations']:>6} {info['iterations']:>6} "
                  f"{info['time']:>8.3f} {extra:>9.3f}")

    # The same warm start in plain Firedrake: write the prediction into u, then solve(F == 0, u).
    # Stop relative to ||F(0)|| (the load, Dirichlet rows included), not to the first residual.
    V, a = disc.V, disc.fields["a"]
    u, v = fd.Function(V, name="u"), fd.TestFunction(V)
    F = lambda w: disc.problem.form({"a": a, "u": w}, v)  # noqa: E731 (the PDE's weak form)
    bc = fd.DirichletBC(V, 0.0, "on_boundary")
    b_norm = fd.assemble(F(fd.Function(V)), bcs=bc).dat.norm
    parameters = {**disc.problem.solver_parameters, "snes_rtol": 0.0, "snes_stol": 0.0,
                  "snes_atol": STOP_RTOL * b_norm}
    solver = fd.NonlinearVariationalSolver(fd.NonlinearVariationalProblem(F(u), u, bcs=bc),
                                           solver_parameters=parameters)
    for label in ("zero", "warm"):
        if label == "warm":
            surrogate.warm_start(u, {"a": a})
        else:
            u.assign(0.0)
        solver.solve()
        print(f"plain Firedrake from {label}: {solver.snes.getIterationNumber()} Newton iterations")


if __name__ == "__main__":
    script_main(main)
