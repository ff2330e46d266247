"""Two-process DDP training on CPU (gloo) under torchrun: the ranks stay in sync."""

import os
import subprocess
import sys
import textwrap

import torch

from piddm_fem import checkpoint
from test_teacher import make_dataset

WORKER = textwrap.dedent("""
    import sys
    import torch
    from piddm_fem.teacher import TeacherTrainer, distributed

    torch.set_num_threads(1)
    data, out, dump = sys.argv[1:4]
    with distributed("cpu") as (rank, world, device):
        settings = dict(batch=8, val_every=2, val_samples=4, warmup=1, lr=5e-3)
        trainer = TeacherTrainer(data, out, settings, device, rank=rank, world=world)
        first = next(trainer.batches())
        init = {k: v.clone() for k, v in trainer.net.state_dict().items()}
        stats = trainer.run(3, progress=False)
        torch.save({"world": world, "backend": torch.distributed.get_backend(), "first": first,
                    "init": init, "final": trainer.net.state_dict(), "ema": trainer.ema.state_dict(),
                    "stats": stats}, f"{dump}/rank{rank}.pt")
""")


def test_two_process_gloo_step_keeps_ranks_identical(tmp_path):
    data = make_dataset(tmp_path / "darcy.h5", n=24)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(data), str(tmp_path / "out"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == "gloo"
    assert r0["first"].shape[0] == r1["first"].shape[0] == 4  # global batch 8 split in two
    assert not torch.equal(r0["first"], r1["first"])  # each rank trains on its own samples
    assert r0["stats"]["step"] == r1["stats"]["step"] == 3
    moved = False
    for name, value in r0["final"].items():
        torch.testing.assert_close(value, r1["final"][name], rtol=0, atol=1e-6)
        torch.testing.assert_close(r0["ema"][name], r1["ema"][name], rtol=0, atol=1e-6)
        moved |= not torch.allclose(value, r0["init"][name])
    assert moved
    ckpt = checkpoint.load(tmp_path / "out" / "last.pt")  # written by rank 0 only
    assert ckpt["step"] == 3
    for name, value in ckpt["model"].items():
        torch.testing.assert_close(value, r0["final"][name])
