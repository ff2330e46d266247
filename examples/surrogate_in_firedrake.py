"""The student as a surrogate inside an ordinary Firedrake script.

    python examples/surrogate_in_firedrake.py --student demo_out/student   # a trained Darcy student
    python examples/surrogate_in_firedrake.py --quick                      # trains a tiny one first

A coefficient is drawn on a *different* mesh (triangles, P1), handed to the surrogate, and the
predicted u comes back as a Function in the caller's space. Quantities of interest are plain UFL:
the outflow -∫ a ∇u·n ds (equal to ∫ f dx for the exact solution) and the energy ½∫ a|∇u|² - ∫ f u,
compared with the FEM solution of the same coefficient. Writes surrogate.pvd for ParaView.
"""

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # PETSc and Firedrake want one thread per rank

from piddm_fem.errors import script_main  # noqa: E402
from piddm_fem.solvers.surrogate import Surrogate  # noqa: E402  piddm first: PETSc must not parse our options
from quickstart import example_arguments  # noqa: E402  (examples/quickstart.py, beside this file)

import firedrake as fd  # noqa: E402, I001


def main():
    args, student = example_arguments(__doc__, "darcy", "surrogate_out")

    surrogate = Surrogate.load(student, device="cpu")
    problem = surrogate.problem

    # Joint samples as Functions on the student's own Q1 mesh.
    samples = surrogate.sample(4, seed=0)
    print(f"4 joint samples: fields {list(samples[0])}, max u {[float(s['u'].dat.data_ro.max()) for s in samples]}")

    # The caller's own mesh and space: triangles, P1, 48 x 48 cells.
    mesh = fd.UnitSquareMesh(48, 48)
    V = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    a = fd.Function(V, name="a").interpolate(  # a smooth two-phase coefficient between 3 and 12
        fd.conditional(fd.lt((x - 0.4) ** 2 + (y - 0.6) ** 2, 0.08), 12.0, 3.0))

    t0 = time.perf_counter()
    u_s = surrogate.predict({"a": a}, steps=50, restarts=4, V=V)  # Algorithm 3's forward task
    u_s.rename("u_surrogate")
    t_s = time.perf_counter() - t0

    u, v = fd.Function(V, name="u_fem"), fd.TestFunction(V)
    f = fd.Constant(problem.params["f"])
    t0 = time.perf_counter()
    fd.solve(problem.form({"a": a, "u": u}, v) == 0, u,  # the PDE's own weak form, on the caller's mesh
             bcs=fd.DirichletBC(V, 0.0, "on_boundary"), solver_parameters=problem.solver_parameters)
    t_fem = time.perf_counter() - t0

    n = fd.FacetNormal(mesh)
    for name, w in (("surrogate", u_s), ("FEM", u)):
        outflow = fd.assemble(-a * fd.inner(fd.grad(w), n) * fd.ds)
        energy = fd.assemble(0.5 * a * fd.inner(fd.grad(w), fd.grad(w)) * fd.dx - f * w * fd.dx)
        print(f"{name:>9}: outflow {outflow:.5f} (exact: {float(fd.assemble(f * fd.dx(domain=mesh))):.5f}), "
              f"energy {energy:.6f}")
    error = fd.Function(V, name="error").interpolate(u_s - u)
    rel = fd.norm(error) / fd.norm(u)
    print(f"relative L2 error of the surrogate {rel:.3f}; surrogate {t_s:.2f}s, FEM solve {t_fem:.2f}s")

    args.out.mkdir(parents=True, exist_ok=True)
    fd.VTKFile(str(args.out / "surrogate.pvd")).write(a, u_s, u, error)
    print(f"wrote {args.out / 'surrogate.pvd'}")


if __name__ == "__main__":
    script_main(main)
