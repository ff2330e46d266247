"""`piddm`: solve | generate | validate | export-operator | teacher | distill | sample | infer |
compare | bench | demo.

Heavy imports (Firedrake, torch) happen inside the commands that need them. Every PiddmError is
printed as one line and exits with code 2; Ctrl-C exits with 130 after the command has saved what
it finished.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from piddm_fem import checks
from piddm_fem.cli import MPI_RANK
from piddm_fem.errors import PiddmError
from piddm_fem.interrupt import write_atomic

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Physics-informed distillation of diffusion models on Firedrake weak forms.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
PROBLEM_HELP = "The problem's registered name (solvers/__init__.py); an unknown name lists them."


def parse_params(items: list[str]) -> dict:
    """`--param k=2.5` pairs as a dict of floats."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise PiddmError(f"--param {item!r}: write NAME=NUMBER, e.g. --param k=2.0")
    return params


ParamOption = typer.Option(None, "--param", help="Problem parameter NAME=VALUE (repeatable).")
ForceOption = typer.Option(False, "--force", help="Run even where the memory estimate exceeds what is free.")
# what Ctrl-C leaves, by command: resumed with --resume, continued by the same command, or nothing
RESUMED_WITH_FLAG, CONTINUED = {"generate", "teacher train", "distill"}, {"demo", "compare"}


def interrupted(argv: list[str]) -> str:
    """The line printed after Ctrl-C for the command in ``argv`` (sys.argv)."""
    command = " ".join(argv[1:3]) if argv[1:2] == ["teacher"] else " ".join(argv[1:2])
    if command in RESUMED_WITH_FLAG:
        return "interrupted: finished work was saved; rerun the same command with --resume to continue"
    if command in CONTINUED:
        return "interrupted: finished work was saved; rerun the same command to continue where it stopped"
    return "interrupted: nothing was saved"


@app.command()
def solve(problem: str = typer.Argument(..., help=PROBLEM_HELP),
          res: int = typer.Option(33, "--res", help="Grid points per side S (mesh of (S-1)^2 cells)."),
          seed: int = typer.Option(0, min=0, help="Seed of the coefficient draw (sample 0 of this seed)."),
          vtk: Optional[Path] = typer.Option(None, help="Directory for a ParaView .pvd file."),
          png: Optional[Path] = typer.Option(None, help="PNG figure of the fields."),
          solver: str = typer.Option("direct", "--solver", help="direct (MUMPS LU) | krylov (CG or GMRES + GAMG; GMRES + ILU for burgers)."),
          warm_start: Optional[Path] = typer.Option(
              None, "--warm-start", help="Student run directory: also solve from its prediction and compare."),
          warm_steps: int = typer.Option(0, "--warm-steps", min=0, help="Forward-task steps of the warm start (0: one student call)."),
          param: list[str] = ParamOption, force: bool = ForceOption):
    """One Firedrake solve: timing, residual, optional figure and VTK output; with --warm-start,
    the same sample solved cold (u = 0) and from the student's prediction."""
    from piddm_fem import grid
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.discrete import DiscreteProblem
    from piddm_fem.solvers.generate import check_memory, sample_rng

    S = grid.check_resolution(res)
    prob = get_problem(problem, **parse_params(param))
    prob.parameters_for(solver)  # an unknown --solver fails before any work
    check_memory(S, force)
    vtk, png = vtk and checks.output_dir(vtk), png and checks.output_file(png, example="u.png")
    surrogate = None
    t0 = time.perf_counter()
    if warm_start is not None:  # the student's Problem and grid are the solve's
        from piddm_fem.solvers.surrogate import Surrogate

        surrogate = Surrogate.load(warm_start)
        surrogate.check_matches(prob, S)
    disc = DiscreteProblem(prob, S) if surrogate is None else surrogate.disc
    setup = time.perf_counter() - t0  # mesh, spaces, forms (and loading the student)
    coefficients = prob.sample_coefficients(S, sample_rng(seed, 0))
    starts = [("cold", None, 0.0)]
    if surrogate is not None:
        t0 = time.perf_counter()
        guess = surrogate.predict(coefficients, steps=warm_steps)
        starts.append(("warm", guess, time.perf_counter() - t0))
    for label, guess, student_seconds in starts:
        fields, info = disc.solve(coefficients, initial_guess=guess, solver=solver)
        if fields is None:
            raise PiddmError(f"{problem} {label} solve diverged ({info['reason']}); check the parameters")
        extra = f" + student {student_seconds:.3f}s" if label == "warm" else ""
        out.print(f"{problem} S={S} {solver} {label}: setup {setup:.2f}s, solve {info['time']:.3f}s{extra}, "
                  f"{info['newton_iterations']} Newton / {info['iterations']} linear iterations, "
                  f"{info['reason']}, relative residual {info['residual_norm']:.2e}")
    if vtk:
        import firedrake as fd

        fd.VTKFile(str(vtk / f"{problem}.pvd")).write(*disc.fields.values())
        out.print(f"wrote {vtk / f'{problem}.pvd'}")
    if png:
        from piddm_fem.figures import plot_panels

        plot_panels(list(zip(prob.channels, fields)), png, title=f"{problem}, S={S}, seed {seed}")
        out.print(f"wrote {png}")


@app.command()
def generate(problem: str = typer.Argument(..., help=PROBLEM_HELP),
             n_samples: int = typer.Option(..., "--n-samples", "-n", help="Number of samples."),
             res: int = typer.Option(33, "--res", help="Grid points per side S."),
             seed: int = typer.Option(0, min=0, help="Dataset seed; sample i depends on (seed, i) only."),
             out_path: Path = typer.Option(..., "--out", help="Output HDF5 file."),
             resume: bool = typer.Option(False, help="Complete an interrupted <out>.partial."),
             overwrite: bool = typer.Option(False, help="Replace an existing file."),
             param: list[str] = ParamOption, force: bool = ForceOption,
             float32: bool = typer.Option(False, "--float32", help="Store the fields in float32: a file "
                                          "about half as large, to carry to a GPU machine; the stored "
                                          "solutions then satisfy the equations to float32 round-off.")):
    """Solve N seeded samples and write a dataset (split across ranks under mpiexec)."""
    from piddm_fem import grid
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.generate import generate as run_generate

    S = grid.check_resolution(res)
    prob = get_problem(problem, **parse_params(param))
    t0 = time.perf_counter()
    counts = run_generate(prob, n_samples, S, seed, out_path, resume=resume, overwrite=overwrite,
                          force=force, float32=float32)
    if counts:
        out.print(f"wrote {out_path}: {counts['ok']} ok, {counts['failed']} failed "
                  f"({counts['solved_now']} solved in {time.perf_counter() - t0:.1f}s)")


@app.command()
def validate(file: Path = typer.Argument(..., help="Any file in the dataset schema."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write a JSON report."),
             max_residual: Optional[float] = typer.Option(
                 None, help="Exit 1 when a sample's relative residual exceeds this."),
             show: int = typer.Option(20, help="Rows of the per-sample table to print.")):
    """Assembled FEM residual (and the torch operator's) of every sample in a file."""
    from piddm_fem.solvers.validate import validate_file

    if max_residual is not None:
        checks.check_range("--max-residual", max_residual, "[0, inf)")
    checks.check_range("--show", show, "[0, inf)")
    if json_out:
        checks.output_file(json_out, example="report.json")
    report = validate_file(file, max_residual)
    summary = report["summary"]
    if not summary["n_ok"]:
        raise PiddmError(f"{file}: no sample has status ok; nothing to validate")
    table = Table(title=f"{file}: {report['problem']} S={report['resolution']} ({report['source']})")
    for col in ("sample", "status", "fem_residual", "torch_residual"):
        table.add_column(col, justify="right")
    for row in report["samples"][:show]:
        table.add_row(str(row["index"]), row["status_name"],
                      *(f"{float('nan') if v is None else v:.3e}" for v in (row["fem_residual"], row["torch_residual"])))
    out.print(table)
    out.print(f"{summary['n_ok']} ok of {summary['n_samples']} samples; relative residual median "
              f"{summary['median']:.3e}, max {summary['max']:.3e}"
              + ("" if max_residual is None else f" (tolerance {max_residual:g})"))
    if summary["n_disagree"]:
        console.print(f"[yellow]warning: torch and FEM residuals disagree on {summary['n_disagree']} samples "
                      f"(first: {summary['disagree'][0]})")
    if json_out:
        write_atomic(json_out, json.dumps(report, indent=1))
    if not report["passed"]:
        console.print(f"[red]residual {summary['max']:.3e} exceeds tolerance {max_residual:g}")
        raise typer.Exit(1)


@app.command("export-operator")
def export_operator(file: Path = typer.Argument(..., help="Dataset file to store the operator in.")):
    """Extract the weak-form residual operator of a file's problem and store it in the file."""
    from piddm_fem import schema
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.export import extract_operator

    info = schema.read_info(file)
    checks.writable_existing(file)
    checks.output_file(file.resolve())  # rewritten through a copy beside it: its folder must be writable
    t0 = time.perf_counter()
    op = extract_operator(get_problem(info.problem, **info.params), info.resolution)
    schema.write_operator(file, op)
    out.print(f"stored the {info.problem} S={info.resolution} operator ({len(op['terms'])} terms) "
              f"in {file} ({time.perf_counter() - t0:.1f}s)")


from piddm_fem.cli import bench as _bench  # noqa: E402
from piddm_fem.cli import compare as _compare  # noqa: E402
from piddm_fem.cli import demo as _demo  # noqa: E402
from piddm_fem.cli import student as _student  # noqa: E402
from piddm_fem.cli import teacher as _teacher  # noqa: E402

app.add_typer(_teacher.app, name="teacher")
app.command()(_student.distill)
app.command()(_student.sample)
app.command()(_student.infer)
app.command(context_settings={"allow_extra_args": True})(_compare.compare)
app.command()(_demo.demo)
app.command()(_bench.bench)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (schedulers, kill) saves like Ctrl-C


def _error(message: str) -> None:
    """The one line `error: ...` on stderr, on rank 0 only under mpiexec (every rank fails alike);
    the message is printed as written, never read as markup (it may quote the user's input)."""
    if not MPI_RANK:
        console.print("[red]error:[/red]", escape(message), highlight=False, soft_wrap=True)


def run() -> None:
    """Console entry point: one-line errors, exit codes 2 (bad input) and 130 (interrupted)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the parent ignores it
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit / --help
    except PiddmError as exc:
        _error(str(exc))
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except typer.Exit as exc:  # Typer turns a KeyboardInterrupt into Exit(130)
        code = exc.exit_code
    except Exception as exc:
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `piddm` alone: the help
            exc.show()
        else:  # a usage error (a missing argument, a value of the wrong type or range): one line
            command = getattr(getattr(exc, "ctx", None), "command_path", "piddm")
            _error(f"{exc.format_message().rstrip('.')}; see `{command} --help`")
        sys.exit(exc.exit_code)
    if code == 130:
        console.print(interrupted(sys.argv))
    sys.exit(code if isinstance(code, int) else 0)
