"""`piddm teacher train | sample`: the EDM diffusion teacher (torch only, no Firedrake)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Train the EDM diffusion teacher on a dataset and sample it.")
out = Console(soft_wrap=True)


@app.command()
def train(data: Path = typer.Argument(..., help="Dataset HDF5 file (piddm generate)."),
          out_dir: Path = typer.Option(..., "--out", help="Directory for last.pt and best.pt."),
          steps: int = typer.Option(2000, help="Train until this optimizer step (total, also with --resume)."),
          batch: Optional[int] = typer.Option(None, help="Global batch size, split over DDP ranks [32]."),
          size: Optional[str] = typer.Option(None, help="Network preset tiny | small | base \\[tiny]."),
          device: str = typer.Option("auto", help="auto | cpu | cuda (under torchrun: one GPU per rank)."),
          resume: bool = typer.Option(False, help="Continue OUT/last.pt with its step count and settings."),
          val_every: Optional[int] = typer.Option(None, help="Validate and checkpoint every K steps [500]."),
          lr: Optional[float] = typer.Option(None, help="Peak AdamW learning rate [1e-3]."),
          warmup: Optional[int] = typer.Option(None, help="Linear learning-rate warm-up steps [200]."),
          padding: Optional[str] = typer.Option(None, help="auto | zeros | circular \\[auto: by problem]."),
          workers: Optional[int] = typer.Option(None, help="DataLoader worker processes [0]; 0 keeps a split "
                                                "that fits in memory on the device."),
          compile: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                                 help="torch.compile the network (falls back to eager) \\[no]."),
          seed: Optional[int] = typer.Option(None, min=0, help="Seed of initialisation, data order and noise [0].")):
    """Train (or resume) the teacher; Ctrl-C saves OUT/last.pt. Multi-GPU: torchrun --nproc_per_node=K."""
    from piddm_fem.teacher import train_teacher

    stats = train_teacher(data, out_dir, steps, batch=batch, size=size, device=device, resume=resume,
                          val_every=val_every, lr=lr, warmup=warmup, padding=padding,
                          workers=workers, seed=seed, compile=compile)
    if stats["rank"] != 0:  # under torchrun only rank 0 reports
        return
    val = "n/a" if stats["val"] is None else f"{stats['val']:.4f}"
    loss = "n/a" if stats["loss"] is None else f"{stats['loss']:.4f}"
    out.print(f"step {stats['step']}: loss {loss}, val {val}, {stats['seconds']:.1f}s; "
              f"checkpoints in {stats['out']}")
    if stats["interrupted"]:  # saved; the main CLI turns this into exit code 130
        out.print(f"saved {out_dir / 'last.pt'} at step {stats['step']}")
        raise KeyboardInterrupt


@app.command()
def sample(ckpt: Path = typer.Argument(..., help="Teacher checkpoint file or training directory."),
           n: int = typer.Option(..., "--n", help="Number of samples (noise indices 0..n-1)."),
           steps: int = typer.Option(18, "--steps", help="Heun steps N_s (2 N_s - 1 network evaluations)."),
           seed: int = typer.Option(0, min=0, help="Noise seed; sample k depends on (seed, k) only."),
           out_path: Path = typer.Option(..., "--out", help="Output HDF5 file in the dataset schema."),
           batch: int = typer.Option(64, help="Samples per batch."),
           device: str = typer.Option("auto", help="auto | cpu | cuda."),
           overwrite: bool = typer.Option(False, help="Replace an existing output file.")):
    """Sample the teacher's EMA network with the deterministic Heun ODE, in physical units."""
    from piddm_fem.teacher import sample_teacher

    stats = sample_teacher(ckpt, n, steps, seed, out_path, device=device, batch=batch,
                           overwrite=overwrite)
    out.print(f"wrote {out_path}: {n} samples, {stats['nfe']} NFE each, {stats['seconds']:.1f}s "
              f"({stats['seconds_per_sample'] * 1e3:.1f} ms/sample on {stats['device']})")
