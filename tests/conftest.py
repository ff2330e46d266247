import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")

import sys  # noqa: E402

try:  # PETSc must not parse pytest's command line
    import petsc4py

    petsc4py.init(sys.argv[:1])
except ImportError:
    pass

import pytest  # noqa: E402


def assert_one_line_error(code, err, *words):
    """Exit code 2 and one line `error: ...` containing ``words``, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


def assert_validates(cli, path):
    """`piddm validate PATH` passes and its torch column is Firedrake's, sample by sample (model
    samples sit far above round-off, so this compares the exported operator with `assemble`)."""
    import json

    report = path.with_name(path.name + ".validate.json")
    code, _, err = cli("validate", path, "--json", report)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["summary"]["n_ok"] == data["summary"]["n_samples"] and data["summary"]["disagree"] == []
    for row in data["samples"]:
        assert row["torch_residual"] == pytest.approx(row["fem_residual"], rel=1e-6)
    return data


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the `piddm` console entry point in-process: returns (exit code, stdout, stderr)."""
    from piddm_fem.cli.main import run

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["piddm", *map(str, args)])
        code = 0
        try:
            run()
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


@pytest.fixture(scope="session")
def darcy_file(tmp_path_factory):
    """A small Firedrake-generated Darcy dataset (S = 17, 6 samples) with its operator."""
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.generate import generate

    path = tmp_path_factory.mktemp("data") / "darcy17.h5"
    generate(get_problem("darcy"), 6, 17, 3, path, show_progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(darcy_file, tmp_path_factory):
    """A tiny EDM teacher trained for a few steps on the Darcy fixture (torch only)."""
    from piddm_fem.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    train_teacher(darcy_file, out, steps=4, batch=4, size="tiny", device="cpu", progress=False,
                  val_every=2, val_samples=2, warmup=1)
    return out


@pytest.fixture(scope="session")
def other_teacher(darcy_file, tmp_path_factory):
    """A second tiny teacher of the same data (another seed, 2 steps): what the student, its pair
    bank and saved comparisons must not be mistaken for."""
    from piddm_fem.teacher import train_teacher

    out = tmp_path_factory.mktemp("other_teacher")
    train_teacher(darcy_file, out, steps=2, batch=4, size="tiny", device="cpu", progress=False,
                  val_every=2, val_samples=2, warmup=1, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_student(darcy_file, tiny_teacher, tmp_path_factory):
    """A student distilled from the tiny teacher for a few steps, with the residual penalty."""
    from piddm_fem.student import distill

    out = tmp_path_factory.mktemp("student")
    distill(tiny_teacher, darcy_file, out, steps=4, device="cpu", progress=False, lambda_train=1e-3,
            pairs=8, teacher_steps=2, batch=4, val_pairs=4, val_every=2, refresh=2)
    return out


def tiny_pipeline(problem: str, root):
    """The whole pipeline on ``problem``, tiny: (data, teacher, student) under ``root``."""
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.generate import generate
    from piddm_fem.student import distill
    from piddm_fem.teacher import train_teacher

    data, teacher, student = root / "data17.h5", root / "teacher", root / "student"
    generate(get_problem(problem), 6, 17, 3, data, show_progress=False)
    train_teacher(data, teacher, steps=4, batch=4, size="tiny", device="cpu", progress=False,
                  val_every=2, val_samples=2, warmup=1)
    distill(teacher, data, student, steps=4, device="cpu", progress=False, lambda_train=1e-3,
            pairs=8, teacher_steps=2, batch=4, val_pairs=4, val_every=2, refresh=2)
    return data, teacher, student


@pytest.fixture(scope="session")
def rd_student(tmp_path_factory):
    """The nonlinear reaction_diffusion problem's tiny pipeline."""
    return tiny_pipeline("reaction_diffusion", tmp_path_factory.mktemp("rd"))


@pytest.fixture(scope="session")
def burgers_student(tmp_path_factory):
    """Space-time Burgers' tiny pipeline (the unknown is data on t = 0)."""
    return tiny_pipeline("burgers", tmp_path_factory.mktemp("burgers"))
