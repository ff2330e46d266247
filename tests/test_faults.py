"""Faults a user meets: two writers of one file, Ctrl-C and SIGKILL during `generate`, corrupt
checkpoints, bad training data and mismatched PDE parameters. Every case checks the exit code,
the one-line message and that no finished data is lost (issue 13)."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
import torch

from conftest import assert_one_line_error
from piddm_fem import checkpoint, schema
from piddm_fem.errors import PiddmError
from piddm_fem.solvers import get_problem
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.generate import generate, solve_sample

pytestmark = pytest.mark.faults
PIDDM = os.path.join(os.path.dirname(sys.executable), "piddm")
S, SEED = 33, 5


def start_generate(out, n, *extra):
    return subprocess.Popen([PIDDM, "generate", "darcy", "-n", str(n), "--res", str(S), "--seed",
                             str(SEED), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120.0):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def ok_samples_are_exact(path, indices=None):
    """The ok samples among ``indices`` (default: the first 3 and the last 5 ok samples, where an
    interrupt strikes) equal a fresh solve of (SEED, i), bit for bit; returns the statuses."""
    with h5py.File(path) as f:
        status, fields = f["status"][:], f["fields"]
        ok = np.flatnonzero(status == schema.STATUS_OK)
        check = np.union1d(ok[:3], ok[-5:]) if indices is None else np.intersect1d(ok, indices)
        disc = DiscreteProblem(get_problem("darcy"), S)
        for i in check:
            assert np.array_equal(fields[i], solve_sample(disc, SEED, int(i))[0]), f"sample {i} differs"
        return status


def test_a_second_writer_of_the_same_out_is_refused(cli, tmp_path):
    out = tmp_path / "race.h5"
    first = start_generate(out, 300)
    wait_for(schema.partial_path(out), first)
    for extra in ((), ("--overwrite",), ("--resume",)):
        code, _, err = cli("generate", "darcy", "-n", "60", "--res", S, "--seed", 9, "--out", out, *extra)
        assert_one_line_error(code, err, "another process is writing", str(out))
    assert first.poll() is None, "the first run must still be running for the race to be real"
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    info, _, status = schema.read(out)
    assert (info.seed, info.n_samples) == (SEED, 300) and (status == schema.STATUS_OK).all()
    ok_samples_are_exact(out, [0, 151, 299])  # the first run's own samples, not the second's
    assert not schema.partial_path(out).exists() and not out.with_name("race.h5.lock").exists()


def test_files_marked_incomplete_are_refused_everywhere(cli, tmp_path, darcy_file, tiny_teacher):
    bad = tmp_path / "half.h5"
    shutil.copy(darcy_file, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["complete"] = False
    for args in (("validate", bad), ("teacher", "train", bad, "--out", tmp_path / "t"),
                 ("distill", tiny_teacher, "--data", bad, "--out", tmp_path / "s"),
                 ("generate", "darcy", "-n", 6, "--res", 17, "--seed", 3, "--out", bad, "--resume")):
        code, _, err = cli(*args)
        assert_one_line_error(code, err, "marked incomplete")
    assert not (tmp_path / "t" / "last.pt").exists() and not (tmp_path / "s" / "last.pt").exists()


def test_atomic_writes_from_several_threads_and_a_failed_write_leave_no_debris(tmp_path):
    """write_atomic's temporary file is per writer: threads writing the same file (the saved rows
    of a comparison, a progress file) never rename each other's file away; a failed write leaves
    the old content and no temporary file."""
    import threading

    from piddm_fem.interrupt import write_atomic

    target, errors = tmp_path / "rows.json", []

    def writer(k):
        try:
            for n in range(200):
                write_atomic(target, f"{k} {n}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_text().endswith(" 199")
    with pytest.raises(TypeError):
        write_atomic(target, 5)
    assert target.read_text().endswith(" 199") and sorted(tmp_path.iterdir()) == [target]


def test_malformed_attributes_are_one_line_errors(cli, tmp_path, darcy_file):
    """Hand-edited or foreign attributes (bad JSON, a non-number, a missing key, a missing operator
    term) are named in one line, never a traceback."""
    import json

    meta = json.loads(h5py.File(darcy_file, "r").attrs["meta"])
    del meta["unknown"]
    cases = {"params": lambda f: f.attrs.__setitem__("params", "not json"),
             "resolution": lambda f: f.attrs.__setitem__("resolution", "abc"),
             "meta": lambda f: f.attrs.__setitem__("meta", json.dumps(meta)),
             "term0": lambda f: f.__delitem__(f"{schema.OPERATOR_GROUP}/term0")}
    for name, edit in cases.items():
        code, _, err = cli("validate", _edited_copy(darcy_file, tmp_path, name, edit))
        assert_one_line_error(code, err, "malformed piddm-fem")


def test_sigint_at_random_points_of_generate_keeps_every_sample_and_resumes(tmp_path):
    out = tmp_path / "int.h5"
    partial, lock = schema.partial_path(out), out.with_name("int.h5.lock")
    rng = random.Random(13)
    done_before = 0
    for attempt in range(3):
        proc = start_generate(out, 300, *(("--resume",) if attempt else ()))
        wait_for(lock, proc)  # this run is past start-up: it holds the output lock
        time.sleep(rng.uniform(0.0, 0.8))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "interrupted: finished work was saved; rerun the same command with --resume" in err, err
        assert "Traceback" not in err and not out.exists()
        status = ok_samples_are_exact(partial, None)
        assert not (status == schema.STATUS_FAILED).any(), "an interrupt stored a sample as failed"
        ok = int((status == schema.STATUS_OK).sum())
        assert ok >= done_before  # nothing finished is lost
        done_before = ok
    proc = start_generate(out, 300, "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    status = ok_samples_are_exact(out, [0, 1, done_before - 1, done_before, 299])
    assert (status == schema.STATUS_OK).all() and not partial.exists()


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_inside_a_petsc_solve_never_marks_a_sample_failed(tmp_path, monkeypatch, signals):
    """SIGINT delivered from inside PETSc's residual callback: once (the solve finishes and is
    kept) or twice (the second raises inside PETSc, which reports error 101: the sample stays
    pending instead of being stored as failed)."""
    from firedrake.solving_utils import _SNESContext

    real = _SNESContext.form_function
    calls = {"n": 0}

    def interrupted(snes, X, F):
        calls["n"] += 1
        if calls["n"] == 4:  # inside the 4th solve (one residual evaluation per linear solve)
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return real(snes, X, F)

    monkeypatch.setattr(_SNESContext, "form_function", staticmethod(interrupted))
    out = tmp_path / "petsc.h5"
    with pytest.raises(KeyboardInterrupt):
        generate(get_problem("darcy"), 8, 17, 3, out, show_progress=False)
    with h5py.File(schema.partial_path(out)) as f:
        status = f["status"][:]
    assert not (status == schema.STATUS_FAILED).any(), status
    assert (status == schema.STATUS_OK).sum() == (4 if signals == 1 else 3), status
    monkeypatch.setattr(_SNESContext, "form_function", staticmethod(real))
    counts = generate(get_problem("darcy"), 8, 17, 3, out, resume=True, show_progress=False)
    assert counts["ok"] == 8 and counts["failed"] == 0


def test_sigkill_then_resume_then_validate(cli, tmp_path):
    out = tmp_path / "kill.h5"
    proc = start_generate(out, 300)
    wait_for(schema.partial_path(out), proc)
    time.sleep(random.Random(7).uniform(0.5, 2.0))
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists()
    code, _, err = cli("generate", "darcy", "-n", 300, "--res", S, "--seed", SEED, "--out", out, "--resume")
    assert code == 0, err
    code, stdout, err = cli("validate", out, "--max-residual", "1e-10", "--show", 0)
    assert code == 0, stdout + err
    assert "disagree" not in err  # clean S = 33 data: no false alarm from round-off
    ok_samples_are_exact(out, [0, 150, 299])


def test_resume_rechecks_samples_marked_ok(tmp_path, darcy_file):
    """A sample stored as ok with NaN fields (a kill between data and status) or with fields that
    do not match its stored residual is solved again on --resume, and the file validates."""
    out = tmp_path / "r.h5"
    partial = schema.partial_path(out)
    shutil.copy(darcy_file, partial)
    with h5py.File(partial, "r+") as f:
        del f["operator"]
        f.attrs["complete"] = False
        f["fields"][1] = np.nan                    # ok status, NaN fields
        f["fields"][4, 1] *= 1.001                 # ok status, last round, wrong values
        f["status"][5] = schema.STATUS_PENDING
        f.attrs["last_round"] = np.array([4], dtype=np.int64)
    counts = generate(get_problem("darcy"), 6, 17, 3, out, resume=True, show_progress=False)
    assert {k: counts[k] for k in ("ok", "failed", "solved_now")} == {"ok": 6, "failed": 0, "solved_now": 3}
    assert np.array_equal(schema.read(out)[1], schema.read(darcy_file)[1])


def test_a_whole_file_write_keeps_an_interrupted_generate(cli, tmp_path, darcy_file, tiny_teacher):
    """Writing model samples to OUT where `piddm generate` left OUT.partial refuses (the partial
    holds solved samples) unless told to overwrite, and the commands say so before sampling; the
    caller's DatasetInfo is left alone."""
    out = tmp_path / "s.h5"
    partial = schema.partial_path(out)
    shutil.copy(darcy_file, partial)
    code, _, err = cli("teacher", "sample", tiny_teacher, "--n", "1", "--out", out)
    assert_one_line_error(code, err, "s.h5.partial", "--overwrite")
    info, fields, _ = schema.read(darcy_file, [0, 1])
    with pytest.raises(PiddmError, match="unfinished file of an interrupted run; pass --overwrite"):
        schema.write(out, info, fields)
    assert partial.exists() and not out.exists()
    schema.write(out, info, fields, overwrite=True)
    assert not partial.exists() and np.array_equal(schema.read(out)[1], fields)
    assert info.n_samples == 6  # the dataset's count, not the written file's


def test_an_interrupted_operator_export_leaves_the_file_as_it_was(tmp_path, darcy_file, monkeypatch):
    """`piddm export-operator` rewrites the operator of a finished file through a copy: Ctrl-C
    (here: a KeyboardInterrupt at the third term) leaves the old operator whole and no copy behind."""
    path = tmp_path / "d.h5"
    shutil.copy(darcy_file, path)
    before = schema.read_operator(path)
    make = h5py.Group.create_dataset
    calls = []

    def interrupted(self, name, *args, **kwargs):
        if name == "term2":
            raise KeyboardInterrupt
        calls.append(name)
        return make(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        schema.write_operator(path, {**before, "terms": before["terms"] * 2})
    monkeypatch.undo()
    assert "term1" in calls and sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]
    after = schema.read_operator(path)
    assert len(after["terms"]) == len(before["terms"])
    for (c0, t0), (c1, t1) in zip(before["terms"], after["terms"]):
        assert c0 == c1 and np.array_equal(t0, t1)
    schema.write_operator(path, before)  # and an uninterrupted export completes
    assert len(schema.read_operator(path)["terms"]) == len(before["terms"])
    assert np.array_equal(schema.read(path)[1], schema.read(darcy_file)[1])


def _corrupt_bytes(path):
    """4 KB of random bytes inside the largest tensor record of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        start = info.header_offset + 30 + int(name_len) + int(extra_len)
        f.seek(start + info.file_size // 3)
        f.write(np.random.default_rng(0).bytes(min(4096, info.file_size // 3)))


def _perturb_tensors(path):
    """Finite noise in every floating tensor, saved without updating the checksum."""
    ckpt = torch.load(path, weights_only=True)
    for key in ("model", "ema"):
        for t in ckpt[key].values():
            if t.is_floating_point():
                t.add_(1e-3 * torch.randn_like(t))
    torch.save(ckpt, path)


@pytest.mark.parametrize("corrupt", [_corrupt_bytes, _perturb_tensors])
def test_a_corrupt_checkpoint_is_a_one_line_error(cli, tmp_path, tiny_teacher, darcy_file, corrupt):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    ckpt = checkpoint.resolve(teacher)
    corrupt(ckpt)
    code, _, err = cli("teacher", "sample", ckpt, "--n", 1, "--steps", 1, "--out", tmp_path / "x.h5")
    assert_one_line_error(code, err, str(ckpt), "checksum mismatch")
    assert not (tmp_path / "x.h5").exists()
    code, _, err = cli("distill", teacher, "--data", darcy_file, "--out", tmp_path / "s", "--steps", 1)
    assert_one_line_error(code, err, str(ckpt), "checksum mismatch")
    assert not (tmp_path / "s" / "last.pt").exists()


def test_a_checkpoint_without_checksum_says_so(cli, tmp_path, tiny_teacher):
    ckpt = tmp_path / "old.pt"
    old = torch.load(checkpoint.resolve(tiny_teacher), weights_only=True)
    del old["checksum"]
    torch.save(old, ckpt)
    code, _, err = cli("teacher", "sample", ckpt, "--n", 1, "--steps", 1, "--out", tmp_path / "x.h5")
    assert_one_line_error(code, err, str(ckpt), "written without a checksum")


def _edited_copy(darcy_file, tmp_path, name, edit):
    """tmp_path/<name>.h5: a copy of the dataset with ``edit(h5py.File)`` applied."""
    path = tmp_path / f"{name}.h5"
    shutil.copy(darcy_file, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _bad_copies(darcy_file, tmp_path):
    """Copies of a good dataset, each with one fault `teacher train` used to accept."""
    def copy(name, edit):
        return _edited_copy(darcy_file, tmp_path, name, edit)

    def nan(f):
        f["fields"][2, 1, 5, 5] = np.nan

    def inf(f):
        f["fields"][0, 0, 1, 1] = np.inf

    def swapped(f):
        f.attrs["channels"] = '["u", "a"]'

    def resolution(f):
        f.attrs["resolution"] = 15
        del f["operator"]

    def extra_channel(f):
        fields = f["fields"][:]
        del f["fields"]
        f["fields"] = np.concatenate([fields, fields[:, :1]], axis=1)

    return [("NaN/Inf", copy("nan", nan)), ("NaN/Inf", copy("inf", inf)),
            ("operator", copy("swapped", swapped)), ("resolution 15", copy("res", resolution)),
            ("expected (N, 2, 17, 17)", copy("extra", extra_channel))]


def test_teacher_train_refuses_bad_data(cli, tmp_path, darcy_file):
    for words, path in _bad_copies(darcy_file, tmp_path):
        out = tmp_path / f"teacher_{path.stem}"
        code, _, err = cli("teacher", "train", path, "--out", out, "--steps", 2, "--batch", 2,
                           "--device", "cpu")
        assert_one_line_error(code, err, words, str(path))
        assert not (out / "last.pt").exists()


def test_distill_refuses_data_with_other_pde_parameters(cli, tmp_path, tiny_teacher):
    data = tmp_path / "f5.h5"
    code, _, err = cli("generate", "darcy", "-n", 6, "--res", 17, "--seed", 3, "--param", "f=5",
                       "--out", data)
    assert code == 0, err
    code, _, err = cli("distill", tiny_teacher, "--data", data, "--out", tmp_path / "s", "--steps", 1)
    assert_one_line_error(code, err, "'f': 1.0", "'f': 5.0", "parameters")
    assert not (tmp_path / "s" / "last.pt").exists()
