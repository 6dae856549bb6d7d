"""Reproducible, resumable randomness of the training states x_t.

Every visit of a training row gets a *state key*, `epoch * len(dataset) + row`; the collator draws that example's
state (mask ratio, block, random tokens) from a generator seeded by `(seed, key)`. A state therefore depends on the
seed, the epoch and the row only, not on the process, the dataloader worker or the batches drawn before it:

- ranks and dataloader workers draw independent states (their rows, hence their keys, differ);
- a run on N processes trains on exactly the states of a 1-process run with the same global batch;
- a run resumed from a checkpoint redraws exactly the states the uninterrupted run drew, with no state to save.

`KeyedSampler` yields the keys (in the order accelerate's seedable sampler gives the rows, identical on every process)
and `KeyedRows` turns a key back into its row plus the `state_key` the collator reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

STATE_KEY = "state_key"


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from the given parts (hashed, so neighbouring seeds or keys give unrelated streams)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def keyed_generator(seed: int, key: int) -> torch.Generator:
    """The CPU generator of one example's state."""
    return torch.Generator().manual_seed(derive_seed(seed, "state", key))


class KeyedSampler(torch.utils.data.Sampler[int]):
    """Yields the state keys of one epoch: rows shuffled by a permutation seeded with `seed + epoch` (the order of
    accelerate's `SeedableRandomSampler`, the same on every process), or in order with `shuffle=False`.

    The Trainer calls `set_epoch` before each epoch (also when it resumes); an epoch iterated to its end advances it
    as well, like accelerate's sampler.
    """

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True):
        if num_rows < 1:
            raise ValueError(f"Cannot sample from an empty dataset (num_rows={num_rows}).")
        self.num_rows, self.seed, self.shuffle = int(num_rows), int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + self.epoch))
            rows = order.tolist()
        else:
            rows = range(self.num_rows)
        offset = self.epoch * self.num_rows
        for row in rows:
            yield offset + row
        self.epoch += 1


class KeyedRows(torch.utils.data.Dataset):
    """Training rows indexed by state key (`key % len`); each row comes back with its `state_key`.

    Plain row indices (`0 <= i < len`, e.g. from a sequential evaluation sampler) are keys of epoch 0, so evaluation
    states are the same at every evaluation. `swap` replaces the rows between rounds (fresh trajectories of the same
    prompts) without a new dataloader; other attributes are those of the wrapped dataset.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self._length = len(dataset)
        if self._length == 0:
            raise ValueError("The training dataset is empty.")

    def swap(self, dataset) -> None:
        if len(dataset) == 0:
            raise ValueError("Cannot swap in an empty dataset.")
        self.dataset = dataset

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: int) -> dict:
        row = self.dataset[(int(key) % self._length) % len(self.dataset)]
        return {**row, STATE_KEY: int(key)}

    def __getattr__(self, name):
        # Never the wrapped dataset's protocols (its `__getitems__` would read keys as rows), nor `dataset` itself
        # before it is set (unpickling in a dataloader worker).
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
