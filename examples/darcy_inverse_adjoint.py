"""Recover Darcy's coefficient a from sparse observations of u: the classical adjoint inversion
(pyadjoint, L-BFGS-B), and the same started from the student.

    python examples/darcy_inverse_adjoint.py --student demo_out/student   # a trained Darcy student
    python examples/darcy_inverse_adjoint.py --quick                      # trains a tiny one first

Part 1 observes u at random points anywhere in the square (a VertexOnlyMesh) and inverts from a
constant start. Part 2 uses Algorithm 3's protocol (random grid nodes, 500 at 128^2 scaled by
S^2) and compares the adjoint from a constant, the student's latent inversion with the exact
FEM solve in the loop, and the adjoint started from the student's estimate.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # PETSc and Firedrake want one thread per rank

import numpy as np  # noqa: E402

from piddm_fem import metrics  # noqa: E402
from piddm_fem.errors import script_main  # noqa: E402
from piddm_fem.solvers.generate import sample_rng  # noqa: E402
from piddm_fem.solvers.gridmap import point_values  # noqa: E402
from piddm_fem.solvers.inverse import AdjointInversion, alpha_for, invert  # noqa: E402
from piddm_fem.solvers.surrogate import Surrogate  # noqa: E402
from quickstart import example_arguments  # noqa: E402  (examples/quickstart.py, beside this file)


def main():
    args, student = example_arguments(__doc__, "darcy", "inverse_out", **{
        "--problems": (int, 2, "held-out problems in part 2"),
        "--iterations": (int, 100, "L-BFGS-B iterations at most")})
    surrogate = Surrogate.load(student, device="cpu")
    disc, S = surrogate.disc, surrogate.S
    threshold = disc.problem.thresholds()["a"]

    # Ground truth for held-out draws (seed 10000; the datasets use seed 0): Firedrake solves.
    truth = []
    for n in range(args.problems):
        fields, _ = disc.solve(disc.problem.sample_coefficients(S, sample_rng(10_000, n)))
        truth.append(fields)
    truth = np.stack(truth)

    # Part 1: u observed at 60 random points (not grid nodes), constant start, H1 regularisation.
    rng = np.random.default_rng(0)
    points = rng.uniform(0.05, 0.95, size=(60, 2))
    values = point_values(disc.gridmap.from_grid(truth[0, 1]), points)
    inversion = AdjointInversion(disc.problem, S, points, values, alpha=alpha_for(0.0))
    result = inversion.run(maxiter=args.iterations)
    error = metrics.binary_error_rate(result["a"][None, None], truth[:1, :1], 0, threshold)[0]
    print(f"part 1, 60 scattered points: {result['iterations']} L-BFGS-B iterations, relative misfit "
          f"{result['misfit']:.2e}, error rate of a {error:.3f}, {result['seconds']:.1f}s")

    # Part 2: Algorithm 3's protocol, every method on the same problems and observations.
    methods = ["adjoint", "fem", "fem+adjoint"]
    out = invert(disc.problem, truth, methods, student=surrogate.student, normalizer=surrogate.normalizer,
                 operator=surrogate.operator, steps=50, restarts=4, adjoint_steps=args.iterations)
    print(f"part 2, {int(out['mask'][0, 1].sum())} observed grid nodes, {args.problems} problems (medians):")
    print(f"{'method':>12} {'error rate a':>12} {'rel. L2 a':>10} {'misfit':>9} {'iterations':>10} {'s/problem':>9}")
    for name in methods:
        s = out["methods"][name]["summary"]
        print(f"{name:>12} {s['error_rate_a']['median']:>12.3f} {s['rel_l2_a']['median']:>10.3f} "
              f"{s['misfit']['median']:>9.2e} {s['iterations']['median']:>10.0f} {s['seconds']['median']:>9.2f}")


if __name__ == "__main__":
    script_main(main)
