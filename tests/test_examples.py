"""The scripts in examples/ run as a user would run them (subprocesses, --quick)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script, *args):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def refused(script, *args, says: str) -> None:
    """The example ends with exit code 2 and an error line saying ``says``, no traceback."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error:"), proc.stderr


@pytest.mark.slow
def test_quickstart_then_surrogate_in_firedrake(tmp_path):
    out = run("quickstart.py", "--quick", "--out", tmp_path / "pipeline")
    assert "8 samples in" in out and "Firedrake relative residual" in out
    # the surrogate example's --quick student lives in OUT/pipeline: the one just trained is reused
    out = run("surrogate_in_firedrake.py", "--quick", "--out", tmp_path)
    assert "4 joint samples" in out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if "outflow" in line}
    assert set(lines) == {"surrogate", "FEM"}
    outflow = {k: float(line.split("outflow")[1].split()[0]) for k, line in lines.items()}
    assert abs(outflow["FEM"] - 1.0) < 0.06  # -∫ a grad u . n ds = ∫ f dx = 1 (P1 on 48 x 48)
    assert np.isfinite(outflow["surrogate"])
    rel = float(out.split("relative L2 error of the surrogate")[1].split(";")[0])
    assert rel < 1.0  # the quick student's u is closer to the FEM solution than u = 0
    assert (tmp_path / "surrogate.pvd").exists()
    # another problem's example never reuses this Darcy student in OUT/pipeline
    refused("warm_start_newton.py", "--quick", "--out", tmp_path, says="holds a darcy pipeline, not reaction_diffusion")
    # nor does the demo's recipe reuse the quick run, and an unknown problem leaves no folder behind
    refused("quickstart.py", "--out", tmp_path / "pipeline", says="holds a run made with other settings")
    refused("quickstart.py", "--problem", "bogus", "--quick", "--out", tmp_path / "bogus", says="bogus")
    assert not (tmp_path / "bogus").exists()
    refused("darcy_inverse_adjoint.py", "--student", tmp_path / "pipeline" / "student", "--problems", 0,
            says="--problems=0 is outside [1, inf)")


@pytest.mark.slow
def test_warm_start_newton(tmp_path):
    out = run("warm_start_newton.py", "--quick", "--draws", "2", "--out", tmp_path)
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert [r[1] for r in rows] == ["zero", "warm", "zero", "warm"]
    assert all(int(r[2]) >= 6 for r in rows if r[1] == "zero")  # Newton from zero: 6+ iterations
    plain = [line for line in out.splitlines() if line.startswith("plain Firedrake")]
    assert len(plain) == 2 and "from zero" in plain[0] and "from warm" in plain[1]
    # the student's start saves Newton iterations (7 -> 5 when written), and the plain Firedrake
    # script, same guess and stopping test, counts what the last draw counted
    assert all(int(w[2]) < int(z[2]) for z, w in zip(rows[::2], rows[1::2]))
    assert [int(line.split(":")[1].split()[0]) for line in plain] == [int(rows[2][2]), int(rows[3][2])]
    # the Darcy examples refuse this reaction_diffusion student, and a draw count of 0
    refused("surrogate_in_firedrake.py", "--student", tmp_path / "pipeline" / "student",
            says="is a reaction_diffusion student; this example needs a darcy one")
    refused("warm_start_newton.py", "--quick", "--draws", 0, "--out", tmp_path, says="--draws=0 is outside [1, inf)")


@pytest.mark.slow
def test_darcy_inverse_adjoint(tmp_path):
    out = run("darcy_inverse_adjoint.py", "--quick", "--problems", "1", "--iterations", "15", "--out", tmp_path)
    assert "part 1, 60 scattered points" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split()[:1] in (["adjoint"], ["fem"], ["fem+adjoint"])}
    assert set(rows) == {"adjoint", "fem", "fem+adjoint"}
    assert all(0 <= float(r[1]) <= 1 for r in rows.values())  # error rates
