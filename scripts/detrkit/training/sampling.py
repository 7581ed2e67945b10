"""Reproducible data order and augmentation, independent of workers, processes and resumption.

The sample order of epoch e is a permutation drawn from `seed + e`, and the augmentation of sample i in
epoch e runs under RNG seeded by (seed, e, i). Neither touches the global RNG (which stays for dropout and
is checkpointed), so a resumed run that skips the batches it already saw produces bit-identical batches.
The segmentation steps keep the order they have always had (one generator stream, `StreamShuffleSampler`),
recomputed from the epoch number for the same reason.
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


class StreamShuffleSampler(Sampler[int]):
    """The order of `DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))`, epoch after epoch,
    recomputable for any epoch (so a resumed run continues it). That loader draws everything from one generator
    stream; per epoch: its workers' base seed, the permutation, and one more permutation that RandomSampler draws
    for its (empty) remainder once the epoch is exhausted. `iterators_per_epoch`: 2 reproduces a loader that was not
    handed to accelerate and ran under tqdm.auto, which opens an iterator of its own first (one more base seed).
    Kept for the segmentation steps, whose trained weights are reproduced with it; new tasks use
    EpochShuffleSampler."""

    def __init__(self, num_samples: int, seed: int, iterators_per_epoch: int = 1):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0
        self.iterators_per_epoch = iterators_per_epoch
        self.next_epoch_stream = None  # (epoch, generator state at its start): epochs in turn replay nothing

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        stream = self.stream_at(self.epoch)
        self._worker_seeds(stream)
        order = torch.randperm(self.num_samples, generator=stream)
        torch.randperm(self.num_samples, generator=stream)  # the remainder's, drawn once the epoch is exhausted
        self.next_epoch_stream = (self.epoch + 1, stream.get_state())
        return iter(order.tolist())

    def stream_at(self, epoch: int) -> torch.Generator:
        """The loader's generator as epoch `epoch` starts: continued from the last epoch drawn, or replayed from
        the seed (a resumed run)."""
        stream = torch.Generator()
        start = 0
        if self.next_epoch_stream is not None and self.next_epoch_stream[0] <= epoch:
            start = self.next_epoch_stream[0]
            stream.set_state(self.next_epoch_stream[1])
        else:
            stream.manual_seed(self.seed)
        for _ in range(start, epoch):  # the draws of the epochs before, in the loader's order
            self._worker_seeds(stream)
            torch.randperm(self.num_samples, generator=stream)
            torch.randperm(self.num_samples, generator=stream)
        return stream

    def _worker_seeds(self, stream: torch.Generator) -> None:
        for _ in range(self.iterators_per_epoch):
            torch.empty((), dtype=torch.int64).random_(generator=stream)  # as DataLoader's iterator draws it

    def __len__(self) -> int:
        return self.num_samples
