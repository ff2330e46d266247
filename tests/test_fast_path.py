"""Issue 11, part 1: the training fast path (device-resident data, channels_last, deferred loss
reads, foreach EMA, optional torch.compile) gives the plain path's results up to float noise."""

import warnings

import numpy as np
import torch

from piddm_fem.student import Distiller
from piddm_fem.teacher import TeacherTrainer
from test_teacher import FAST, make_dataset

torch.set_num_threads(1)


def assert_close_weights(a: dict, b: dict, atol: float) -> None:
    """Equal up to ``atol``: float noise, next to Adam steps of lr (2e-3) each over 20 steps."""
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol)


def test_teacher_fast_path_matches_the_dataloader_path(tmp_path):
    data = make_dataset(tmp_path / "d.h5")
    plain = TeacherTrainer(data, tmp_path / "plain", dict(FAST, resident=False, channels_last=False, val_every=100),
                           torch.device("cpu"))
    fast = TeacherTrainer(data, tmp_path / "fast", dict(FAST, workers=0, channels_last=True, val_every=100),
                          torch.device("cpu"))
    assert torch.equal(next(plain.batches()), next(fast.batches()))  # the same batches, read differently
    a, b = plain.run(20, progress=False), fast.run(20, progress=False)
    assert a["step"] == b["step"] == 20 and abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"])
    assert_close_weights(plain.net.state_dict(), fast.net.state_dict(), 1e-4)
    assert_close_weights(plain.ema.state_dict(), fast.ema.state_dict(), 1e-4)


def test_a_failed_compile_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d.h5")

    def broken_compile(module):
        def call(*args, **kwargs):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager = TeacherTrainer(data, tmp_path / "eager", dict(FAST, val_every=100), torch.device("cpu"))
    fallback = TeacherTrainer(data, tmp_path / "c", dict(FAST, val_every=100, compile=True), torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback.run(3, progress=False)
    assert any("torch.compile failed (RuntimeError: no compiler here)" in str(w.message) for w in caught)
    eager.run(3, progress=False)
    assert_close_weights(eager.net.state_dict(), fallback.net.state_dict(), 0.0)


def test_student_fast_path_matches_the_plain_path(tiny_teacher, darcy_file, tmp_path):
    runs = {}
    for layout in (False, True):
        d = Distiller(tiny_teacher, darcy_file, tmp_path / str(layout),
                      {"lambda_train": 1e-2, "pairs": 8, "teacher_steps": 2, "batch": 4, "val_every": 100,
                       "refresh": 10, "channels_last": layout}, torch.device("cpu"), False)
        stats = d.run(20, progress=False)
        runs[layout] = (stats, d.student.net.state_dict())
    assert np.isclose(runs[False][0]["val_regression"], runs[True][0]["val_regression"], rtol=1e-4)
    assert_close_weights(runs[False][1], runs[True][1], 1e-4)


def test_layout_default_is_channels_last_except_float32_on_cuda():
    """teacher.memory_format: the default layout per device and precision; an explicit choice wins."""
    from piddm_fem.teacher import memory_format

    assert memory_format(None, "cpu") is torch.channels_last
    assert memory_format(None, torch.device("cuda")) is torch.contiguous_format  # fp32: group_norm copies
    assert memory_format(None, "cuda", bf16=True) is torch.channels_last
    assert memory_format(True, "cuda") is torch.channels_last and memory_format(False, "cpu") is torch.contiguous_format
    # why it is on for the CPU: group_norm keeps a channels-last activation there (on CUDA it makes it contiguous)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    assert torch.nn.functional.group_norm(x, 4).is_contiguous(memory_format=torch.channels_last)
