"""Dataset files: schema, determinism, resume after Ctrl-C, MPI split, atomic writes."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from piddm_fem import schema
from piddm_fem.errors import PiddmError
from piddm_fem.solvers import generate as generate_module
from piddm_fem.solvers import get_problem, mpiexec_env
from piddm_fem.solvers.generate import generate


def test_dataset_file_schema(darcy_file):
    info, fields, status = schema.read(darcy_file)
    assert (info.problem, info.channels, info.resolution, info.seed) == ("darcy", ["a", "u"], 17, 3)
    assert fields.shape == (6, 2, 17, 17) and fields.dtype == np.float64
    assert (status == schema.STATUS_OK).all()
    with h5py.File(darcy_file) as f:
        assert f.attrs["complete"] and f.attrs["schema_version"] == schema.SCHEMA_VERSION
        assert (f["solver_info/residual_norm"][:] < 1e-10).all()
        assert (f["solver_info/time"][:] > 0).all()
        assert "operator" in f
    # boundary nodes are part of the grid and hold the Dirichlet value
    u = fields[:, 1]
    assert np.abs(u[:, 0, :]).max() < 1e-14 and np.abs(u[:, :, -1]).max() < 1e-14
    assert u[:, 8, 8].min() > 0


def _interrupted_generation(monkeypatch, path, **options) -> None:
    """Generate the Darcy fixture's 6 samples into ``path`` with a Ctrl-C at the 4th solve."""
    real = generate_module.solve_sample
    calls = {"n": 0}

    def interrupted(disc, seed, index):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(disc, seed, index)

    monkeypatch.setattr(generate_module, "solve_sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(get_problem("darcy"), 6, 17, 3, path, show_progress=False, **options)
    monkeypatch.setattr(generate_module, "solve_sample", real)


def test_interrupt_keeps_finished_samples_and_resume_completes(tmp_path, monkeypatch, darcy_file):
    path = tmp_path / "d.h5"
    _interrupted_generation(monkeypatch, path)
    assert not path.exists()  # never mistaken for complete
    with h5py.File(schema.partial_path(path)) as f:
        assert (f["status"][:] == schema.STATUS_OK).sum() == 3
        assert not f.attrs["complete"]
    with pytest.raises(PiddmError, match="exists|resume"):
        generate(get_problem("darcy"), 6, 17, 4, path, resume=True, show_progress=False)
    with h5py.File(schema.partial_path(path), "r+") as f:  # written by another version of the recipes
        f.attrs["version"], ours = "0.1.0", f.attrs["version"]
    with pytest.raises(PiddmError, match="piddm-fem 0.1.0 wrote it .* --overwrite"):
        generate(get_problem("darcy"), 6, 17, 3, path, resume=True, show_progress=False)
    with h5py.File(schema.partial_path(path), "r+") as f:
        f.attrs["version"] = ours
    counts = generate(get_problem("darcy"), 6, 17, 3, path, resume=True, show_progress=False)
    assert counts["solved_now"] == 3 and counts["ok"] == 6
    # sample i depends only on (seed, i): identical to the uninterrupted file
    assert np.array_equal(schema.read(path)[1], schema.read(darcy_file)[1])


def test_a_float32_file_holds_the_solutions_rounded_and_resumes_as_float32(tmp_path, monkeypatch, darcy_file):
    from piddm_fem.solvers.generate import F32_RESIDUAL
    from piddm_fem.solvers.validate import validate_file

    path = tmp_path / "d32.h5"
    _interrupted_generation(monkeypatch, path, float32=True)
    with pytest.raises(PiddmError, match="float32 fields; add --float32"):
        generate(get_problem("darcy"), 6, 17, 3, path, resume=True, show_progress=False)
    counts = generate(get_problem("darcy"), 6, 17, 3, path, resume=True, show_progress=False, float32=True)
    assert counts["solved_now"] == 3 and counts["ok"] == 6  # the recheck kept the rounded samples
    with h5py.File(path) as f, h5py.File(darcy_file) as f64:
        assert f["fields"].dtype == np.float32
        assert f["fields"].id.get_storage_size() < 0.6 * f64["fields"].id.get_storage_size()
    _, fields, _ = schema.read(path)
    exact = schema.read(darcy_file)[1]
    assert fields.dtype == np.float64 and np.array_equal(fields, exact.astype(np.float32).astype(np.float64))
    report = validate_file(path)
    assert report["passed"] and not report["summary"]["disagree"]  # torch = Firedrake on what is stored
    assert 1e-9 < report["summary"]["max"] < F32_RESIDUAL  # float32 round-off, no more


def test_existing_output_needs_overwrite(darcy_file):
    with pytest.raises(PiddmError, match="--overwrite"):
        generate(get_problem("darcy"), 6, 17, 3, darcy_file, show_progress=False)


@pytest.mark.mpi
def test_two_ranks_give_the_same_file(tmp_path, darcy_file):
    out = tmp_path / "mpi.h5"
    piddm = os.path.join(os.path.dirname(sys.executable), "piddm")
    cmd = ["mpiexec", "-n", "2", piddm, "generate", "darcy", "-n", "6", "--res", "17",
           "--seed", "3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=mpiexec_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\x1b[" not in proc.stdout + proc.stderr  # ranks write to a pty, yet no colour codes
    assert np.array_equal(schema.read(out)[1], schema.read(darcy_file)[1])


@pytest.mark.mpi
def test_two_ranks_over_several_rounds_give_the_same_file(tmp_path):
    """More rounds than the two that start before rank 0's first word: rank 0's share is then
    rebalanced from the measured times, and the file still equals the one-rank file."""
    n = 5 * 2 * generate_module.ROUND_PER_RANK + 3  # 6 rounds, the last one short
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    generate(get_problem("darcy"), n, 9, 5, one, show_progress=False)
    piddm = os.path.join(os.path.dirname(sys.executable), "piddm")
    cmd = ["mpiexec", "-n", "2", piddm, "generate", "darcy", "-n", str(n), "--res", "9",
           "--seed", "5", "--out", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=mpiexec_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    (_, a, status_a), (_, b, status_b) = schema.read(one), schema.read(two)
    assert np.array_equal(a, b) and np.array_equal(status_a, status_b)
    assert (status_b == schema.STATUS_OK).all()
