"""The whole pipeline from Python, no CLI: generate -> teacher -> student -> sample -> validate.

    python examples/quickstart.py --quick            # tiny settings, well under a minute
    python examples/quickstart.py --out runs/darcy   # the demo's settings (about 8 min on 2 cores)

Every stage skips what is already in --out, so a run can be interrupted and started again. The
other examples import ``train_pipeline`` from here for their ``--quick`` students.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # PETSc and Firedrake want one thread per rank

import numpy as np

from piddm_fem import checkpoint, schema
from piddm_fem.checkpoint import DONE
from piddm_fem.checks import check_range
from piddm_fem.errors import PiddmError, script_main
from piddm_fem.recipe import DEMO, QUICK, claim_folder, distill_stage, generate_data, train_teacher_stage
from piddm_fem.solvers import get_problem
from piddm_fem.solvers.discrete import DiscreteProblem


def train_pipeline(problem: str, out: Path, cfg: dict) -> Path:
    """Dataset, teacher and student for ``problem`` under ``out`` on the demo's recipe ``cfg``
    (piddm_fem.recipe: DEMO or QUICK); returns the student directory."""
    get_problem(problem)  # an unknown name fails before anything is written
    data, teacher, student = out / "data.h5", out / "teacher", out / "student"
    if data.exists() and (held := schema.read_info(data).problem) != problem:  # e.g. another example's
        raise PiddmError(f"{out} holds a {held} pipeline, not {problem}; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    claim_folder(out, cfg)
    if not data.exists():  # 1. Firedrake solves seeded coefficient draws; the file holds the operator
        generate_data(cfg, problem, data, progress=False)
    if not (teacher / DONE).exists():  # 2. an EDM diffusion teacher of the joint field (a, u)
        train_teacher_stage(cfg, data, teacher, "cpu", progress=False)
    if not (student / DONE).exists():  # 3. a one-step student, the weak-form residual penalty late
        distill_stage(cfg, data, teacher, student, "cpu", progress=False)
    return student


def example_arguments(doc: str, problem: str, out: str, **extra) -> tuple[argparse.Namespace, Path]:
    """The other examples' command line: --student DIR (a ``problem`` student), or --quick (a tiny
    student trained for ``problem`` under OUT/pipeline), --out, plus ``extra`` {"--name": (type,
    default, help)}, whose integers are counts (at least 1). Returns the parsed arguments and the
    student directory."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--student", type=Path, help=f"a {problem} student run directory")
    parser.add_argument("--quick", action="store_true", help="train a tiny student first (seconds)")
    parser.add_argument("--out", type=Path, default=Path(out))
    for name, (kind, default, help_text) in extra.items():
        parser.add_argument(name, type=kind, default=default, help=help_text)
    args = parser.parse_args()
    if args.student is None and not args.quick:
        parser.error("pass --student DIR or --quick")
    for name, (kind, _, _) in extra.items():
        if kind is int:
            check_range(name, getattr(args, name.lstrip("-").replace("-", "_")), "[1, inf)")
    if args.student is not None and (held := checkpoint.load(args.student, kind="student")["problem"]) != problem:
        raise PiddmError(f"{args.student} is a {held} student; this example needs a {problem} one (or --quick)")
    return args, args.student or train_pipeline(problem, args.out / "pipeline", QUICK)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="darcy")
    parser.add_argument("--out", type=Path, default=Path("quickstart_out"))
    parser.add_argument("--quick", action="store_true", help="tiny data and models (seconds)")
    args = parser.parse_args()

    student = train_pipeline(args.problem, args.out, QUICK if args.quick else DEMO)

    # 4. sample: one network call per field, then 20 steps of residual refinement (PIDDM-ref)
    from piddm_fem.student import sample_student

    stats = sample_student(student, n=8, seed=0, refine_steps=20, out_path=args.out / "samples.h5",
                           device="cpu", overwrite=True)
    print(f"8 samples in {stats['sample_seconds']:.3f}s; residual (torch operator) median "
          f"{np.median(stats['residual_before']):.3f} -> {np.median(stats['residual_after']):.3f} refined")

    # 5. validate with Firedrake: the assembled FEM residual of every sample
    info, fields, _ = schema.read(args.out / "samples.h5")
    disc = DiscreteProblem(get_problem(info.problem, **info.params), info.resolution)
    fem = [disc.relative_residual(x) for x in fields]
    print(f"Firedrake relative residual of the refined samples: median {np.median(fem):.3f}")


if __name__ == "__main__":
    script_main(main)
