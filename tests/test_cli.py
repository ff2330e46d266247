"""The CLI: one-line errors with non-zero exit codes for bad input, and the happy paths."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_one_line_error
from piddm_fem import schema

PIDDM = os.path.join(os.path.dirname(sys.executable), "piddm")


def test_bad_input_gives_one_line_errors(cli, tmp_path, darcy_file):
    cases = [
        (("solve", "navier"), ("unknown problem", "darcy")),
        (("generate", "darcy", "-n", "2", "--res", "2", "--out", tmp_path / "x.h5"), ("S >= 3",)),
        (("validate", tmp_path / "missing.h5"), ("no such file",)),
        (("generate", "darcy", "-n", "2", "--res", "17", "--out", darcy_file), ("--overwrite",)),
        (("solve", "helmholtz", "--param", "k"), ("NAME=NUMBER",)),
        (("solve", "darcy", "--seed", "-1"), ("'--seed'", "greater than or equal to 0", "piddm solve --help")),
        (("compare", darcy_file, "--teacher", tmp_path, "--out", tmp_path / "c", "--seeds", "-1"), ("'--seeds'",)),
        (("teacher", "sample"), ("Missing argument", "piddm teacher sample --help")),
        (("generate", "darcy", "-n", "two"), ("'-n'", "valid integer")),
        (("compare", darcy_file, "--teacher", tmp_path, "--out", tmp_path / "c", "--seeds", "0", "[bold]"),
         ("unexpected argument '[bold]'",)),  # the user's text is printed, not read as markup
    ]
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 50)
    cases.append((("validate", corrupt), ("not a readable HDF5 file",)))
    old = tmp_path / "old.h5"
    with h5py.File(darcy_file) as src, h5py.File(old, "w") as dst:
        src.copy("fields", dst)
        dst.attrs.update(src.attrs)
        dst.attrs["schema_version"] = 99
    cases.append((("validate", old), ("schema version 99",)))
    cases.append((("validate", tmp_path), ("is a folder", "give an HDF5 file")))
    failed = tmp_path / "failed.h5"
    shutil.copy(darcy_file, failed)
    with h5py.File(failed, "r+") as f:
        f["status"][:] = schema.STATUS_FAILED
    cases.append((("validate", failed, "--json", tmp_path / "failed.json"), ("no sample has status ok",)))
    for args, words in cases:
        code, _, err = cli(*args)
        assert_one_line_error(code, err, *words)
    assert not (tmp_path / "failed.json").exists()  # nothing written on bad input


def _write_raw(path, info, fields):
    with h5py.File(path, "w") as f:
        f["fields"] = fields
        f.attrs.update({"problem": info.problem, "channels": json.dumps(info.channels),
                        "resolution": info.resolution, "schema_version": schema.SCHEMA_VERSION,
                        "complete": True})


def test_nan_and_wrong_channel_count_are_rejected(cli, tmp_path, darcy_file):
    _, fields, _ = schema.read(darcy_file)
    bad = fields.copy()
    bad[2, 1, 3, 3] = np.nan
    info = schema.read_info(darcy_file)
    _write_raw(tmp_path / "nan.h5", info, bad)
    code, _, err = cli("validate", tmp_path / "nan.h5")
    assert_one_line_error(code, err, "NaN", "sample 2")
    info.channels = ["a", "u", "p"]
    _write_raw(tmp_path / "chan.h5", info, fields)
    code, _, err = cli("validate", tmp_path / "chan.h5")
    assert_one_line_error(code, err, "expected (N, 3, 17, 17)")


def test_validate_reports_both_residuals_and_flags_perturbed_fields(cli, tmp_path, darcy_file):
    report = tmp_path / "ok.json"
    code, out, _ = cli("validate", darcy_file, "--json", report, "--max-residual", "1e-10")
    assert code == 0, out
    data = json.loads(report.read_text())
    assert data["passed"] and data["summary"]["n_ok"] == 6 and data["summary"]["disagree"] == []
    for row in data["samples"]:
        assert row["status_name"] == "ok" and row["fem_residual"] <= 1e-10
        assert row["torch_residual"] == pytest.approx(row["fem_residual"], rel=1e-3, abs=1e-13)
    info, fields, _ = schema.read(darcy_file)
    fields[:, 1] *= 1.0 + 0.01 * np.random.default_rng(0).standard_normal(fields[:, 1].shape)
    info.source = "perturbed"
    schema.write(tmp_path / "noisy.h5", info, fields)
    code, _, err = cli("validate", tmp_path / "noisy.h5", "--max-residual", "1e-6",
                        "--json", tmp_path / "noisy.json")
    assert code == 1
    data = json.loads((tmp_path / "noisy.json").read_text())
    assert not data["passed"] and data["summary"]["median"] > 1e-3
    assert data["summary"]["disagree"] == []  # the torch column is the FEM one, sample by sample
    for row in data["samples"]:
        assert row["torch_residual"] == pytest.approx(row["fem_residual"], rel=1e-8)


def test_solve_writes_figure_and_vtk(cli, tmp_path):
    code, out, err = cli("solve", "poisson", "--res", "17", "--png",
                          tmp_path / "p.png", "--vtk", tmp_path / "vtk")
    assert code == 0, err
    assert "relative residual" in out
    assert (tmp_path / "p.png").stat().st_size > 1000
    vtu = [p.read_text(errors="replace") for p in (tmp_path / "vtk").rglob("*.vtu")]
    assert (tmp_path / "vtk" / "poisson.pvd").exists() and len(vtu) == 1
    assert 'Name="u"' in vtu[0] and 'Name="f"' in vtu[0]  # both fields, as ParaView reads them


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run([PIDDM, "generate", "navier_stokes", "-n", "1", "--out", str(tmp_path / "ns.h5")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "unknown problem" in proc.stderr and "Traceback" not in proc.stderr


def test_export_operator_adds_an_operator_to_any_file(cli, tmp_path, darcy_file):
    import torch

    from piddm_fem.residual import ResidualOperator

    info, fields, _ = schema.read(darcy_file)
    info.source = "copy"
    schema.write(tmp_path / "plain.h5", info, fields)
    assert schema.read_operator(tmp_path / "plain.h5") is None
    code, out, err = cli("export-operator", tmp_path / "plain.h5")
    assert code == 0, err
    op = ResidualOperator.from_file(tmp_path / "plain.h5")
    assert (op.problem, op.resolution) == ("darcy", 17)
    x = torch.from_numpy(fields)  # the exported terms are the generator's: solver data at round-off,
    assert op.relative(x).max() <= 1e-10  # and the same residual where there is one
    x[:, 1] *= 1.01
    torch.testing.assert_close(op.raw(x), ResidualOperator.from_file(darcy_file).raw(x), rtol=1e-12, atol=1e-15)


def test_bench_rejects_an_unknown_benchmark(cli, tmp_path):
    code, _, err = cli("bench", "nope")
    assert_one_line_error(code, err, "unknown benchmark")
    # the scripts' own bad-input errors are one line too, not tracebacks
    code, _, err = cli("bench", "residual", "--", "--res", "1")
    assert_one_line_error(code, err, "resolution 1 is too small")
    (tmp_path / "t.txt").write_text("not a checkpoint")
    code, _, err = cli("bench", "warm-start", "--", "--student", tmp_path / "t.txt")
    assert_one_line_error(code, err, "not a readable checkpoint")
    assert "weights_only" not in err
    for which, options in (("residual", ["--batch"]), ("sampling", ["--batch"]), ("generate", ["--n"]),
                           ("warm-start", ["--student", tmp_path / "t.txt", "--n"])):
        option = options[-1]
        code, _, err = cli("bench", which, "--", *options, "0")
        assert_one_line_error(code, err, f"{option}=0 is outside [1, inf)")
    # and so they are when a script is run directly, as the docs show
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "warm_start.py"
    proc = subprocess.run([sys.executable, str(script), "--student", str(tmp_path / "t.txt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error:"), proc.stderr
    assert "not a readable checkpoint" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def read_only():
    """Make paths unwritable even for root (chattr +i; chmod for other users); undone afterwards."""
    made = []

    def make(path):
        if os.geteuid() == 0:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("chattr +i is not permitted here, so root can write everywhere")
        else:
            path.chmod(0o555 if path.is_dir() else 0o444)
        made.append(path)
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


def test_bad_values_and_outputs_are_refused_before_any_work(cli, tmp_path, darcy_file, tiny_teacher,
                                                            read_only):
    x = tmp_path / "x.h5"
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (tmp_path / "ro").mkdir()
    ro = read_only(tmp_path / "ro")
    ro_file = tmp_path / "ro_file.h5"
    shutil.copy(darcy_file, ro_file)
    read_only(ro_file)
    gen = ("generate", "darcy", "-n", "1", "--res", "9")
    cases = [
        ((*gen[:-1], "100000", "--out", x), ("GiB", "--force")),
        ((*gen[:-1], "100000", "--out", x, "--force"), ("4 GiB chunk limit",)),
        (("solve", "darcy", "--res", "100000"), ("GiB", "--force")),
        ((*gen, "--out", x, "--param", "tau=0", "--param", "alpha=0"), ("alpha=0.0 is outside (1, inf)",)),
        ((*gen, "--out", x, "--param", "tau=0"), ("tau=0.0 is outside (0, inf)",)),
        (("solve", "helmholtz", "--param", "k=nan"), ("k=nan",)),
        (("solve", "darcy", "--param", "a_low=-3"), ("a_low=-3.0", "(0, inf)")),
        (("solve", "darcy", "--param", "a_low=12"), ("a_low = 12 must be below a_high = 12",)),
        (("teacher", "train", darcy_file, "--out", tmp_path / "t0", "--batch", "0"), ("--batch=0",)),
        ((*gen, "--out", a_dir, "--overwrite"), ("is a directory",)),
        (("demo", "--quick", "--out", a_file), ("is a file",)),
        (("solve", "darcy", "--res", "9", "--vtk", a_file), ("is a file",)),
        (("solve", "darcy", "--res", "9", "--png", a_dir), ("is a directory", "u.png")),
        (("validate", darcy_file, "--max-residual", "-1"), ("--max-residual=-1.0",)),
        (("validate", darcy_file, "--max-residual", "nan"), ("--max-residual=nan",)),
        (("distill", tiny_teacher, "--data", darcy_file, "--out", tmp_path / "s", "--lambda-train", "-1"),
         ("--lambda-train=-1.0",)),
        (("distill", tiny_teacher, "--data", darcy_file, "--out", tmp_path / "s", "--ema-decay", "1"),
         ("--ema-decay=1.0", "[0, 1)")),
        (("compare", darcy_file, "--teacher", tiny_teacher, "--out", tmp_path / "c", "--guidance-steps", "0"),
         ("--guidance-steps=0", "[1, inf)")),
        (("compare", darcy_file, "--teacher", tiny_teacher, "--out", tmp_path / "c", "--n-eval", "0"),
         ("--n-eval=0",)),
        (("compare", darcy_file, "--teacher", tiny_teacher, "--out", tmp_path / "c", "--task-problems", "-2"),
         ("--task-problems=-2",)),
        ((*gen, "--out", ro / "x.h5"), ("cannot write",)),
        (("teacher", "train", darcy_file, "--out", ro / "t"), ("cannot write",)),
        (("teacher", "sample", tiny_teacher, "--n", "1", "--out", ro / "x.h5"), ("cannot write",)),
        (("export-operator", ro_file), ("cannot write",)),
    ]
    for args, words in cases:
        code, _, err = cli(*args)
        assert_one_line_error(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file", "ro", "ro_file.h5"]
    assert not any(a_dir.iterdir()) and not any((tmp_path / "ro").iterdir())
    code, _, err = cli("validate", darcy_file, "--json", tmp_path / "no" / "dir" / "r.json")
    assert code == 0, err
    assert json.loads((tmp_path / "no" / "dir" / "r.json").read_text())["passed"]


@pytest.mark.mpi
def test_a_bad_parameter_under_mpiexec_is_one_clean_line(tmp_path):
    from piddm_fem.solvers import mpiexec_env

    proc = subprocess.run(["mpiexec", "-n", "2", PIDDM, "generate", "darcy", "-n", "2", "--res", "9",
                           "--param", "tau=0", "--out", str(tmp_path / "m.h5")],
                          capture_output=True, text=True, timeout=300, env=mpiexec_env())
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert [line for line in output.splitlines() if "error:" in line] == [
        "error: problem 'darcy': tau=0.0 is outside (0, inf); pick a value in (0, inf)"], output
    assert "Traceback" not in output and "MPI_ABORT" not in output and "\x1b[" not in output
    assert not list(tmp_path.iterdir())
    # a script's error (errors.script_main) is one line under mpiexec too
    (tmp_path / "t.txt").write_text("not a checkpoint")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "warm_start.py"
    proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, str(script), "--student", str(tmp_path / "t.txt")],
                          capture_output=True, text=True, timeout=300, env=mpiexec_env())
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and len([line for line in output.splitlines() if "error:" in line]) == 1, output


def test_help_texts_are_printed_whole():
    """`--help` reads help texts as rich markup, where a bracket such as "[tiny]" is a style tag and
    vanishes; every help text must print as written (brackets that open a word escaped as "\\[")."""
    import typer
    from rich.text import Text

    from piddm_fem.cli.main import app

    def texts(command):
        yield command.name, command.help or ""
        for param in command.params:
            yield f"{command.name} {param.name}", getattr(param, "help", None) or ""
        for sub in getattr(command, "commands", {}).values():  # a group's subcommands
            yield from texts(sub)

    found = list(texts(typer.main.get_command(app)))
    assert any("[tiny]" in Text.from_markup(h).plain for _, h in found)  # the case this guards
    for where, text in found:
        assert Text.from_markup(text).plain == text.replace("\\[", "["), where


def test_ctrl_c_names_how_each_command_continues():
    """After Ctrl-C the line printed names --resume only for commands that have it, and "nothing
    was saved" for those that keep nothing."""
    import typer

    from piddm_fem.cli.main import CONTINUED, RESUMED_WITH_FLAG, app, interrupted

    root = typer.main.get_command(app)

    def command(name):
        found = root
        for word in name.split():
            found = found.commands[word]
        return found

    for name in RESUMED_WITH_FLAG:
        assert "resume" in [p.name for p in command(name).params], name
        assert "--resume" in interrupted(["piddm", *name.split(), "x"])
    for name in CONTINUED:
        assert "resume" not in [p.name for p in command(name).params], name
        assert interrupted(["piddm", name, "--out", "x"]).endswith("rerun the same command to continue where it stopped")
    for argv in (["piddm", "sample", "s"], ["piddm", "teacher", "sample", "t"], ["piddm", "infer", "s"]):
        assert interrupted(argv) == "interrupted: nothing was saved"


def test_the_cli_shows_the_librarys_defaults():
    """The defaults that `--help` prints are the library's constants, not copies that can drift."""
    import inspect

    from piddm_fem.cli import student, teacher
    from piddm_fem.edm import HEUN_STEPS
    from piddm_fem.tasks import LAMBDA_INFER, RESTARTS, TASK_STEPS

    def default(command, name):
        return inspect.signature(command).parameters[name].default.default

    assert default(teacher.sample, "steps") == HEUN_STEPS
    assert default(student.sample, "lambda_infer") == LAMBDA_INFER
    assert (default(student.infer, "steps"), default(student.infer, "restarts")) == (TASK_STEPS, RESTARTS)

    # the defaults written into help texts as "[value]": the teacher's TrainConfig, compare's Budget
    import re

    from piddm_fem.cli import compare
    from piddm_fem.evaluation import Budget
    from piddm_fem.tasks import TASK_LAMBDA
    from piddm_fem.teacher import TrainConfig

    def shown(command, name):
        return re.search(r"\\?\[([^]]*)\]", inspect.signature(command).parameters[name].default.help).group(1)

    for name in ("batch", "val_every", "lr", "warmup", "workers", "seed"):
        assert float(shown(teacher.train, name)) == getattr(TrainConfig(), name), name
    assert shown(teacher.train, "size") == TrainConfig().size
    assert shown(teacher.train, "padding").startswith(TrainConfig().padding)
    assert shown(teacher.train, "compile") == ("yes" if TrainConfig().compile else "no")
    assert float(shown(compare.compare, "guidance_steps")) == Budget().guidance_steps
    assert shown(compare.compare, "fno_seconds").endswith(f"else {Budget().fno_seconds:g}")
    weights = re.fullmatch(r"the norm's: l2 (\S+), dual (\S+)", shown(student.infer, "lam")).groups()
    assert tuple(map(float, weights)) == (TASK_LAMBDA["l2"], TASK_LAMBDA["dual"])
