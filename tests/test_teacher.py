"""Teacher data pipeline, training, checkpoints, sampling and CLI on tiny synthetic datasets."""

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from piddm_fem import __version__, checkpoint, grid, schema
from piddm_fem.cli.teacher import app
from piddm_fem.data import (FieldDataset, InfiniteSampler, Normalizer, compute_normalizer,
                            open_dataset, split_indices)
from piddm_fem.errors import PiddmError
from piddm_fem.teacher import (TeacherTrainer, dataset_splits, load_teacher, sample_teacher, teacher_pairs,
                               train_teacher)

torch.set_num_threads(1)
S = 17
FAST = dict(batch=8, val_every=2, val_samples=8, warmup=1, lr=2e-3)


def make_dataset(path, problem="darcy", S=S, n=40, seed=0, failed=()):
    """Darcy-like synthetic fields: a in {3, 12} (stripes), u ~ 1e-2; ``failed`` samples are NaN."""
    rng = np.random.default_rng(seed)
    X, Y = grid.coordinates(S)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1, 1))
    a = np.where(np.sin(4 * X + phase) * np.cos(3 * Y) > 0, 12.0, 3.0)
    u = 0.01 * amp * np.sin(np.pi * X) * np.sin(np.pi * Y)
    info = schema.DatasetInfo(problem, ["a", "u"], S, n, seed=seed, params={"f": 1.0})
    schema.write(path, info, np.stack([a, u], axis=1))
    if failed:
        with h5py.File(path, "r+") as f:
            for k in failed:
                f["status"][k] = schema.STATUS_FAILED
                f["fields"][k] = np.nan
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "darcy.h5", failed=(3, 17))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    stats = train_teacher(data, out, steps=4, device="cpu", progress=False, **FAST)
    return out, stats


def test_split_indices_deterministic_disjoint_complete():
    a = split_indices(100, (0.8, 0.1, 0.1), seed=3)
    b = split_indices(100, (0.8, 0.1, 0.1), seed=3)
    assert [len(a[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(100))
    assert not np.array_equal(a["val"], split_indices(100, (0.8, 0.1, 0.1), seed=4)["val"])
    assert sum(len(v) for v in split_indices(10, (0.5, 0.2, 0.0)).values()) == 7
    with pytest.raises(PiddmError, match="fractions"):
        split_indices(10, (0.9, 0.2, 0.1))


def test_only_ok_samples_and_normalisation(data):
    info, splits = open_dataset(data)
    used = np.concatenate(list(splits.values()))
    assert info.problem == "darcy" and sorted(used) == sorted(set(range(40)) - {3, 17})
    norm = compute_normalizer(data, splits["train"])
    _, fields, _ = schema.read(data, splits["train"])
    np.testing.assert_allclose(norm.mean, fields.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(norm.std, fields.std(axis=(0, 2, 3)), rtol=1e-8)
    ds = FieldDataset(data, splits["train"], norm)
    x = torch.stack([ds[k] for k in range(len(ds))])
    assert x.dtype == torch.float32 and x.shape == (len(ds), 2, S, S)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(2), atol=1e-3, rtol=0)
    back = Normalizer.from_dict(norm.to_dict()).denormalize(x.double())
    np.testing.assert_allclose(back.numpy(), fields, rtol=1e-6, atol=1e-8)


def test_dataset_streams_through_worker_processes(data):
    _, splits = open_dataset(data)
    ds = FieldDataset(data, splits["val"], compute_normalizer(data, splits["train"]))
    ds[0]  # an open h5py handle in the parent must not break the workers
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    torch.testing.assert_close(torch.cat(list(loader)), torch.stack([ds[k] for k in range(len(ds))]))


def test_infinite_sampler_shards_and_resumes():
    n, world = 10, 2
    streams = [InfiniteSampler(n, r, world, seed=1) for r in range(world)]
    first = [[x for _, x in zip(range(5), iter(s))] for s in streams]
    assert sorted(first[0] + first[1]) == list(range(n))  # one epoch, split between the ranks
    resumed = InfiniteSampler(n, 1, world, seed=1, start=3)
    whole = [x for _, x in zip(range(8), iter(streams[1]))]
    assert [x for _, x in zip(range(5), iter(resumed))] == whole[3:]


def test_training_reduces_validation_loss(data, tmp_path):
    trainer = TeacherTrainer(data, tmp_path, dict(FAST, val_every=100, val_samples=16, ema_decay=0.5),
                             torch.device("cpu"))
    before = trainer.validate()
    trainer.run(30, progress=False)
    after = trainer.validate()  # same fixed validation noise: a like-for-like comparison
    assert trainer.step == 30
    assert after < 0.9 * before, (before, after)


def test_checkpoint_contents_and_loading(trained, data):
    out, stats = trained
    assert stats["step"] == 4 and not stats["interrupted"]
    ckpt = checkpoint.load(out / "last.pt")
    assert (out / "best.pt").exists()
    assert ckpt["kind"] == "teacher" and ckpt["step"] == 4 and ckpt["version"] == __version__
    assert (ckpt["problem"], ckpt["resolution"], ckpt["channels"]) == ("darcy", S, ["a", "u"])
    assert ckpt["params"] == {"f": 1.0}
    assert ckpt["config"]["net"]["padding"] == "zeros" and ckpt["config"]["train"]["batch"] == 8
    assert {"model", "ema", "optimizer", "normalization", "best_val"} <= set(ckpt)
    net, _ = load_teacher(out / "last.pt")
    assert not any(p.requires_grad for p in net.parameters())
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, ckpt["ema"][name])
    # a directory resolves to best.pt
    assert checkpoint.resolve(out) == out / "best.pt"
    # the held-out split of the training run is recoverable from the checkpoint
    _, splits = dataset_splits(ckpt, data)
    _, again = open_dataset(data)
    assert all(np.array_equal(splits[k], again[k]) for k in ("train", "val", "test"))
    assert len(splits["test"]) == 3 and not set(splits["test"]) & set(splits["train"])


def test_resume_continues_the_same_run(data, tmp_path):
    straight = train_teacher(data, tmp_path / "a", steps=6, device="cpu", progress=False, **FAST)
    train_teacher(data, tmp_path / "b", steps=3, device="cpu", progress=False, **FAST)
    resumed = train_teacher(data, tmp_path / "b", steps=6, device="cpu", resume=True, progress=False)
    assert straight["step"] == resumed["step"] == 6
    a, b = checkpoint.load(tmp_path / "a" / "last.pt"), checkpoint.load(tmp_path / "b" / "last.pt")
    assert b["step"] == 6 and b["config"]["train"]["lr"] == FAST["lr"]  # settings kept
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["ema"][name], b["ema"][name], rtol=1e-5, atol=1e-6)


def test_a_trainer_seeds_its_weights_without_reseeding_its_caller(data, tmp_path):
    """The initial weights depend on the run's seed alone, and building and running a trainer (as
    PIDM does inside `piddm compare`) leaves the caller's global random stream where it was."""
    draws, weights = [], []
    for outer in (1, 2):
        torch.manual_seed(outer)
        trainer = TeacherTrainer(data, tmp_path / str(outer), dict(FAST, val_every=100), torch.device("cpu"))
        trainer.run(2, progress=False)  # training and validation draw from a fork
        draws.append(torch.rand(4))
        weights.append(torch.cat([p.detach().flatten() for p in trainer.net.parameters()]))
        torch.manual_seed(outer)
        assert torch.equal(draws[-1], torch.rand(4))
    assert torch.equal(weights[0], weights[1]) and not torch.equal(draws[0], draws[1])


def test_ctrl_c_saves_last_and_resumes(data, tmp_path, monkeypatch):
    trainer = TeacherTrainer(data, tmp_path, dict(FAST, val_every=100), torch.device("cpu"))
    step = trainer.train_step

    def interrupt_at_3(x):
        if trainer.step == 3:
            raise KeyboardInterrupt
        return step(x)

    monkeypatch.setattr(trainer, "train_step", interrupt_at_3)
    stats = trainer.run(10, progress=False)
    assert stats["interrupted"] and stats["step"] == 3
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 3
    assert train_teacher(data, tmp_path, steps=5, resume=True, device="cpu", progress=False)["step"] == 5


def test_a_signal_inside_the_update_lands_after_it_and_the_resume_repeats_no_step(data, tmp_path, monkeypatch):
    """SIGINT delivered inside the optimizer's update: the update, its step count and the EMA finish
    together before the run stops, so the resumed run equals an uninterrupted one."""
    import os
    import signal

    straight = TeacherTrainer(data, tmp_path / "a", dict(FAST, val_every=100), torch.device("cpu"))
    straight.run(6, progress=False)
    trainer = TeacherTrainer(data, tmp_path / "b", dict(FAST, val_every=100), torch.device("cpu"))
    update = trainer.opt.step

    def signalled(*args, **kwargs):
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return update(*args, **kwargs)

    monkeypatch.setattr(trainer.opt, "step", signalled)
    stats = trainer.run(6, progress=False)
    assert stats["interrupted"] and stats["step"] == 4
    saved = checkpoint.load(tmp_path / "b" / "last.pt")
    assert saved["step"] == 4
    train_teacher(data, tmp_path / "b", steps=6, resume=True, device="cpu", progress=False)
    resumed = checkpoint.load(tmp_path / "b" / "last.pt")
    for name, value in straight.net.state_dict().items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(resumed["ema"][name], straight.ema.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_start_and_resume_errors(trained, data, tmp_path):
    out, _ = trained
    with pytest.raises(PiddmError, match="--resume"):
        train_teacher(data, out, steps=5, device="cpu", progress=False)
    with pytest.raises(PiddmError, match="nothing to resume"):
        train_teacher(data, tmp_path / "empty", steps=5, resume=True, device="cpu", progress=False)
    with pytest.raises(PiddmError, match="size='small' differs"):
        train_teacher(data, out, steps=5, size="small", resume=True, device="cpu", progress=False)


def test_mismatched_problem_or_grid_is_an_error(trained, tmp_path):
    out, _ = trained
    poisson = make_dataset(tmp_path / "poisson.h5", problem="poisson")
    with pytest.raises(PiddmError, match=r"trained on darcy S=17 but .*poisson\.h5 is poisson S=17"):
        train_teacher(poisson, out, steps=5, resume=True, device="cpu", progress=False)
    with pytest.raises(PiddmError, match="use a checkpoint trained on this problem/grid"):
        dataset_splits(checkpoint.load(out), poisson)
    ckpt = checkpoint.load(out)
    with pytest.raises(PiddmError, match=r"darcy S=17 but DATA\.h5 is darcy S=33"):
        checkpoint.check_compatible(ckpt, schema.DatasetInfo("darcy", ["a", "u"], 33, 1), "DATA.h5")
    with pytest.raises(PiddmError, match=r"channels \['a', 'u'\] vs \['k', 'u'\]"):
        checkpoint.check_compatible(ckpt, schema.DatasetInfo("darcy", ["k", "u"], S, 1), "DATA.h5")
    with pytest.raises(PiddmError, match=r"parameters \{'f': 1.0\} but DATA\.h5 has \{'f': 5.0\}"):
        checkpoint.check_compatible(ckpt, schema.DatasetInfo("darcy", ["a", "u"], S, 1, params={"f": 5.0}),
                                    "DATA.h5")
    checkpoint.check_compatible(ckpt, schema.DatasetInfo("darcy", ["a", "u"], S, 1, params={"f": 1.0}),
                                "DATA.h5")


def test_bad_checkpoint_files(tmp_path, data):
    with pytest.raises(PiddmError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")
    with pytest.raises(PiddmError, match="no best.pt or last.pt"):
        checkpoint.load(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PiddmError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "junk.pt")
    torch.save({"step": 1}, tmp_path / "dict.pt")
    with pytest.raises(PiddmError, match="not a piddm-fem checkpoint"):
        checkpoint.load(tmp_path / "dict.pt")
    with pytest.raises(PiddmError, match="not a readable checkpoint"):
        checkpoint.load(data)  # an HDF5 file is not a checkpoint


def test_save_is_atomic(tmp_path, monkeypatch):
    checkpoint.save(tmp_path / "last.pt", {"step": 1})

    def crash(obj, f):
        f.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "last.pt", {"step": 2})
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_sample_writes_physical_units_independent_of_batch(trained, tmp_path):
    out, _ = trained
    stats = sample_teacher(out, 5, num_steps=3, seed=11, out_path=tmp_path / "s.h5", device="cpu",
                           batch=2, progress=False)
    assert stats["nfe"] == 5 and stats["n"] == 5 and stats["seconds"] > 0
    info, fields, status = schema.read(tmp_path / "s.h5")
    assert info.source == "teacher" and info.problem == "darcy" and info.resolution == S
    assert info.channels == ["a", "u"] and info.seed == 11 and info.params == {"f": 1.0}
    assert info.solver_parameters["num_steps"] == 3 and (status == schema.STATUS_OK).all()
    net, ckpt = load_teacher(out)
    eps, x0, nfe = teacher_pairs(net, ckpt, 11, [4, 0], num_steps=3)
    assert nfe == 5 and eps.shape == x0.shape == (2, 2, S, S)
    phys = Normalizer.from_dict(ckpt["normalization"]).denormalize(x0.double()).numpy()
    # equal up to float32 rounding, which differs with the batch composition
    np.testing.assert_allclose(fields[[4, 0]], phys, rtol=0, atol=1e-4 * np.abs(phys).max())
    assert fields[:, 0].mean() > 2.0  # coefficient channel back on the scale of {3, 12}
    with pytest.raises(PiddmError, match="--overwrite"):
        sample_teacher(out, 2, 2, 0, tmp_path / "s.h5", device="cpu", progress=False)


def test_cli_train_and_sample(data, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "t"), "--steps", "2",
                              "--batch", "4", "--val-every", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "step 2" in res.output and (tmp_path / "t" / "last.pt").exists()
    res = runner.invoke(app, ["sample", str(tmp_path / "t" / "last.pt"), "--n", "3", "--steps", "2",
                              "--seed", "1", "--out", str(tmp_path / "s.h5"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert schema.read_info(tmp_path / "s.h5").n_samples == 3
    res = runner.invoke(app, ["sample", str(tmp_path / "nope"), "--n", "1", "--out", str(tmp_path / "x.h5")])
    assert isinstance(res.exception, PiddmError) and "no such checkpoint" in str(res.exception)
