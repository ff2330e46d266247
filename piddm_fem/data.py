"""Torch access to the HDF5 datasets of ``piddm_fem.schema``: splits, normalisation, streaming.

Only samples with ``status == ok`` are used. ``split_indices`` splits them by position into
train/val/test deterministically from a seed. ``Normalizer`` holds the per-channel mean and std
of the training split (stored in checkpoints: Darcy's a in {3, 12} and u ~ 1e-2 differ by orders
of magnitude). ``FieldDataset`` reads one sample at a time from disk and opens the file lazily in
each DataLoader worker, so a dataset never has to fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from piddm_fem import schema
from piddm_fem.errors import PiddmError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def ok_indices(path) -> np.ndarray:
    """File indices of the samples with status ok, ascending."""
    with schema._open(Path(path)) as f:
        status = f["status"][:] if "status" in f else np.full(f["fields"].shape[0], schema.STATUS_OK)
    return np.flatnonzero(status == schema.STATUS_OK)


def split_indices(n_ok: int, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> dict[str, np.ndarray]:
    """Positions 0..n_ok-1 split into train/val/test (sorted) by a seeded permutation.

    Sizes are floor(fraction * n_ok) for val and test, the rest for train; the same
    (n_ok, fractions, seed) always gives the same split."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) > 1 + 1e-9:
        raise PiddmError(f"split fractions {fractions} must be three non-negative numbers summing to <= 1")
    perm = np.random.default_rng(seed).permutation(n_ok)
    n_val, n_test = int(fractions[1] * n_ok), int(fractions[2] * n_ok)
    n_train = n_ok - n_val - n_test if sum(fractions) > 1 - 1e-9 else int(fractions[0] * n_ok)
    cuts = np.cumsum([n_train, n_val, n_test])
    parts = np.split(perm, cuts)[:3]
    return {name: np.sort(part) for name, part in zip(SPLITS, parts)}


@dataclass
class Normalizer:
    """x_norm = (x - mean) / std per channel; ``mean`` and ``std`` are float64 [C]."""

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))

    def _stats(self, x: torch.Tensor):
        shape = (-1, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[..., C, S, S] physical -> normalised."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """[..., C, S, S] normalised -> physical units."""
        mean, std = self._stats(x)
        return x * std + mean


def compute_normalizer(path, indices, chunk: int = 256) -> Normalizer:
    """Per-channel mean and std over the samples ``indices`` of the file, read in chunks."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if indices.size == 0:
        raise PiddmError(f"{path}: no training samples to normalise over; generate more samples")
    total = total_sq = count = 0
    with schema._open(Path(path)) as f:
        for start in range(0, indices.size, chunk):
            x = f["fields"][indices[start:start + chunk]].astype(np.float64, copy=False)
            total = total + x.sum(axis=(0, 2, 3))
            total_sq = total_sq + (x**2).sum(axis=(0, 2, 3))
            count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    # A constant channel (e.g. a fixed coefficient) keeps unit scale instead of dividing by zero.
    std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return Normalizer(mean, std)


PRELOAD_BYTES = 1 << 30  # splits smaller than this are read into memory once (h5py reads per item are slow)


class FieldDataset(torch.utils.data.Dataset):
    """Normalised float32 samples [C, S, S] at the given file indices, read lazily from disk;
    a split under PRELOAD_BYTES is read once, in one call, at first access."""

    def __init__(self, path, indices, normalizer: Normalizer):
        self.path = Path(path)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.normalizer = normalizer
        self._file = None
        self._cache = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getstate__(self):
        # h5py handles cannot cross process boundaries: each worker reopens the file.
        return {**self.__dict__, "_file": None, "_cache": None}

    def _fields(self):
        if self._file is None:
            self._file = schema._open(self.path)
        return self._file["fields"]

    def cached(self) -> torch.Tensor | None:
        """The whole split, normalised [N, C, S, S] float32, read once; None above PRELOAD_BYTES."""
        fields = self._fields()
        if self._cache is None and fields[0].nbytes * self.indices.size < PRELOAD_BYTES:
            order = np.argsort(self.indices)
            cache = np.empty((self.indices.size, *fields.shape[1:]))
            cache[order] = fields[self.indices[order]]
            self._cache = self.normalizer.normalize(torch.from_numpy(cache)).to(torch.float32)
        return self._cache

    def __getitem__(self, k: int) -> torch.Tensor:
        cache = self.cached()
        if cache is not None:
            return cache[k]
        x = torch.from_numpy(self._fields()[int(self.indices[k])])
        return self.normalizer.normalize(x).to(torch.float32)


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless shuffled positions 0..n-1 for one of ``world`` ranks.

    The global stream is one seeded permutation per epoch, dealt round-robin to the ranks; each
    rank starts at item ``start`` of its share, so a resumed run continues the same order."""

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, start: int = 0):
        if n < 1:
            raise PiddmError("no training samples; generate more samples or change the split")
        self.n, self.rank, self.world, self.seed, self.start = n, rank, world, seed, start

    def __iter__(self):
        j, epoch, perm = self.start, None, None
        while True:
            e, pos = divmod(j * self.world + self.rank, self.n)
            if e != epoch:
                epoch, perm = e, np.random.default_rng([self.seed, e]).permutation(self.n)
            yield int(perm[pos])
            j += 1


def open_dataset(path, fractions=DEFAULT_FRACTIONS, seed: int = 0):
    """(info, {split: file indices}) for a dataset file that passes ``schema.check_dataset``,
    with only ok samples in the splits."""
    info = schema.check_dataset(path)
    ok = ok_indices(path)
    if ok.size < 2:
        raise PiddmError(f"{path}: only {ok.size} samples with status ok; generate more samples")
    positions = split_indices(ok.size, fractions, seed)
    return info, {name: ok[pos] for name, pos in positions.items()}
