"""Reproducible data order and augmentation, independent of workers, processes and resumption.

The sample order of epoch e is a permutation drawn from `seed + e`, and the augmentation of sample i in
epoch e runs under RNG seeded by (seed, e, i). Neither touches the global RNG (which stays for dropout and
is checkpointed), so a resumed run that skips the batches it already saw produces bit-identical batches.
Every task (detection and both segmentation steps) draws its order this way.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation per epoch drawn from `seed + epoch` (no `generator` attribute on purpose: accelerate would
    otherwise re-seed it across processes)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


class SeededAugmentation(Dataset):
    """Runs `dataset[i]` (which may draw random augmentations) under RNG seeded by (seed, epoch, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __getattr__(self, name):  # expose the wrapped dataset's attributes (id2label, coco, ...)
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
