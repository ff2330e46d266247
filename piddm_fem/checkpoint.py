"""Model checkpoints: a plain dict written atomically with torch.save, loaded with clear errors.

A checkpoint (docs/teacher.md) holds ``kind`` ("teacher", ...), the dataset identity (``problem``,
``resolution``, ``channels``, ``params``), ``normalization`` ({mean, std} per channel),
``config`` (network and training settings), ``model`` and ``ema`` state dicts, ``optimizer``,
``step``, ``best_val``, the package ``version`` and ``checksum``: a SHA-256 of everything else,
verified on load, so a corrupted file is a one-line error instead of wrong weights. Only tensors
and plain Python values are stored, so loading uses ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from piddm_fem import __version__, schema
from piddm_fem.errors import PiddmError

LAST, BEST = "last.pt", "best.pt"
DONE = "done"  # beside them when a training stage has finished: its stats (JSON)
REQUIRED = ("kind", "problem", "resolution", "channels", "normalization", "config", "ema", "step")


def checksum(ckpt: dict) -> str:
    """SHA-256 of a checkpoint's content (every tensor's dtype, shape and bytes, every plain
    value), in a fixed key order, without its ``checksum`` entry."""
    h = hashlib.sha256()

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            h.update(b"{")
            for key in sorted(obj, key=repr):
                if key != "checksum":
                    h.update(repr(key).encode())
                    walk(obj[key])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for item in obj:
                walk(item)
            h.update(b"]")
        else:
            h.update(repr(obj).encode())

    walk(ckpt)
    return h.hexdigest()


def save(path, ckpt: dict) -> None:
    """Write ``ckpt`` (plus the package version and its checksum) to ``path`` via a temp file
    and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    ckpt = {**ckpt, "version": __version__}
    try:
        torch.save({**ckpt, "checksum": checksum(ckpt)}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def resolve(ckpt_or_dir) -> Path:
    """The checkpoint file: the path itself, or in a directory best.pt, else last.pt."""
    path = Path(ckpt_or_dir)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise PiddmError(f"{path}: directory holds no {BEST} or {LAST}; train a model into it first")
    if not path.exists():
        raise PiddmError(f"{path}: no such checkpoint; check the path or train a model first")
    return path


def load(ckpt_or_dir, kind: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint (file or training directory); ``kind`` checks what it holds."""
    path = resolve(ckpt_or_dir)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "weights_only" in first:  # torch's advice to load unsafely is not ours to give
            first = "not a file of tensors and plain values that torch.load reads safely"
        raise PiddmError(f"{path}: not a readable checkpoint ({first}); retrain or restore a good copy") from None
    missing = [k for k in REQUIRED if k not in ckpt] if isinstance(ckpt, dict) else list(REQUIRED)
    if missing:
        raise PiddmError(f"{path}: not a piddm-fem checkpoint (missing {', '.join(missing)}); "
                         "pass a last.pt/best.pt written by piddm")
    if "checksum" not in ckpt:
        raise PiddmError(f"{path}: written without a checksum (piddm-fem {ckpt.get('version', '?')}, before "
                         "checkpoints carried one); retrain it, or re-save a copy you trust with "
                         "piddm_fem.checkpoint.save")
    if ckpt["checksum"] != checksum(ckpt):
        raise PiddmError(f"{path}: checksum mismatch, the file is corrupt or was modified after "
                         "it was written; retrain or restore a good copy")
    if kind is not None and ckpt["kind"] != kind:
        raise PiddmError(f"{path} is a {ckpt['kind']} checkpoint; pass a {kind} checkpoint")
    return ckpt


def distilled_from(student: dict, teacher: dict) -> bool:
    """Whether the student checkpoint was distilled from this teacher checkpoint (by its checksum;
    students from before the record are taken to be)."""
    return student.get("teacher", {}).get("checksum", teacher["checksum"]) == teacher["checksum"]


def meta(ckpt: dict) -> dict:
    """The problem metadata the checkpoint was trained with (defaults for older checkpoints)."""
    return ckpt.get("meta") or schema.default_meta(ckpt["problem"], list(ckpt["channels"]))


def boundary(ckpt: dict) -> list[str]:
    return list(ckpt.get("boundary", schema.DEFAULT_BOUNDARY))


def dataset_info(ckpt: dict, n: int, seed: int, source: str, solver_parameters: dict):
    """The DatasetInfo of ``n`` fields generated from the checkpoint's model."""
    return schema.DatasetInfo(problem=ckpt["problem"], channels=list(ckpt["channels"]),
                              resolution=int(ckpt["resolution"]), n_samples=n, seed=seed, source=source,
                              params=ckpt.get("params", {}), solver_parameters=solver_parameters,
                              boundary=boundary(ckpt), meta=meta(ckpt))


def check_compatible(ckpt: dict, info, where) -> None:
    """Raise unless the checkpoint was trained on ``info``'s problem, grid, channels and PDE
    parameters."""
    have = (ckpt["problem"], int(ckpt["resolution"]), list(ckpt["channels"]))
    want = (info.problem, int(info.resolution), list(info.channels))
    if have == want and ckpt.get("params", {}) != info.params:
        raise PiddmError(
            f"checkpoint trained with {ckpt['problem']} parameters {ckpt.get('params', {})} but "
            f"{where} has {info.params}; use data made with the checkpoint's --param values or "
            "train a teacher on this data"
        )
    if have != want:
        extra = f" channels {have[2]} vs {want[2]}" if have[2] != want[2] else ""
        raise PiddmError(
            f"checkpoint trained on {have[0]} S={have[1]} but {where} is {want[0]} S={want[1]}"
            f"{extra}; use a checkpoint trained on this problem/grid"
        )
