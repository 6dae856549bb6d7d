"""Reproducible, resumable randomness of the training states x_t.

Every draw of a training row gets a *state key*: its position in the run's stream of draws, `epoch * n + p` (p-th draw
of epoch `epoch`, n = rows of an epoch). Every random choice about that example is drawn from generators seeded by
`(seed, name, key)`: its state (mask ratio, block, random tokens) in the collator, and in the trainer the reference's
fake tokens at `reference_temperature > 0`, the mean-field queries and the mean-field fill. An example's randomness
therefore depends on the seed and its key only, not on the process, the dataloader worker, the batch or the draws
before it:

- ranks and dataloader workers draw independent states (their keys differ);
- a run on N processes trains on exactly the numbers of a 1-process run with the same global batch, for every
  objective;
- a run resumed from a checkpoint redraws exactly what the uninterrupted run drew, with no generator state to save.

`KeyedSampler` yields the keys in order; `KeyedRows` turns a key into its row (the p-th row of the epoch's shuffled
order, which is accelerate's `SeedableRandomSampler` order) plus the `state_key`. Multi-round runs swap in each
round's trajectories at a key: from there on, rows are served as a shuffled stream of the new round's rows, each once
per `len(rows)` draws, whatever their number.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

import torch

STATE_KEY = "state_key"
ROUND_KEY = "state_round"  # the round whose rows a batch was built from (a prefetched batch may predate a swap)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from the given parts (hashed, so neighbouring seeds or keys give unrelated streams)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def keyed_generator(seed: int, key: int) -> torch.Generator:
    """The CPU generator of one example's state."""
    return torch.Generator().manual_seed(derive_seed(seed, "state", key))


def keyed_uniform(
    seed: int, name: str, keys: torch.Tensor, counts: torch.Tensor, width: int, device, dtype=torch.float64
) -> torch.Tensor:
    """Uniform [0, 1) draws for a batch, example by example: example i gets `(counts[i], width)` values from a generator
    on `device` seeded by `(seed, name, keys[i])`, stacked in example order into `(counts.sum(), width)`. The values of
    an example depend on its key and count only, never on the other examples of its batch."""
    parts = []
    for key, count in zip(keys.tolist(), counts.tolist()):
        if count:
            generator = torch.Generator(device=device).manual_seed(derive_seed(seed, name, int(key)))
            parts.append(torch.rand((int(count), width), generator=generator, device=device, dtype=dtype))
    if not parts:
        return torch.empty((0, width), device=device, dtype=dtype)
    return torch.cat(parts)


def shuffled_row(seed: int, cycle: int, position: int, num_rows: int, shuffle: bool) -> int:
    """Row at `position` of the `cycle`-th pass over `num_rows` rows: accelerate's `SeedableRandomSampler` order
    (`randperm` seeded with `seed + cycle`), or in order."""
    if not shuffle:
        return position
    return int(_permutation(seed + cycle, num_rows)[position])


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, num_rows: int) -> torch.Tensor:
    return torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))


class KeyedSampler(torch.utils.data.Sampler[int]):
    """Yields the state keys of one epoch in order, `epoch * num_rows + p` for p < num_rows (the same on every
    process); `KeyedRows` maps them to shuffled rows.

    The Trainer calls `set_epoch` before each epoch (also when it resumes); an epoch iterated to its end advances it
    as well, like accelerate's sampler. `seed` and `shuffle` are kept for `KeyedRows`.
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
        offset = self.epoch * self.num_rows
        yield from range(offset, offset + self.num_rows)
        self.epoch += 1


class KeyedRows(torch.utils.data.Dataset):
    """Training rows indexed by state key; each row comes back with its `state_key` and the `round` it belongs to.

    Key `epoch * n + p` is the row at position p of epoch `epoch`'s shuffled order (`shuffled_row`, seeded with
    `seed + epoch`), n = the rows of round 0. `swap(rows, start_key)` begins a new round (fresh trajectories of the same
    prompts, in any number): keys from `start_key` on are served from a shuffled stream of the new rows, every
    `len(rows)` consecutive keys covering each row once. Plain row indices (`0 <= i < n`, e.g. from a sequential
    evaluation sampler with `shuffle=False`) are keys of epoch 0. Other attributes are those of the current rows.
    """

    def __init__(self, dataset, seed: int = 0, shuffle: bool = False):
        if len(dataset) == 0:
            raise ValueError("The training dataset is empty.")
        self.dataset, self.seed, self.shuffle = dataset, int(seed), shuffle
        self._length = len(dataset)
        self.rounds = [(0, dataset)]  # (first key, rows) of every round

    def swap(self, dataset, start_key: int | None = None) -> None:
        """Serve `dataset` from `start_key` on (default: from the start of the run, for a dataset of the same rows)."""
        if len(dataset) == 0:
            raise ValueError("Cannot swap in an empty dataset.")
        start_key = 0 if start_key is None else int(start_key)
        self.rounds = [r for r in self.rounds if r[0] < start_key] + [(start_key, dataset)]
        self.dataset = dataset

    @property
    def round(self) -> int:
        return len(self.rounds) - 1

    def __len__(self) -> int:
        return self._length

    def locate(self, key: int) -> tuple[int, int]:
        """(round, row) that key `key` serves."""
        key = int(key)
        index = max(i for i, (start, _) in enumerate(self.rounds) if start <= key or i == 0)
        start, rows = self.rounds[index]
        if index == 0:
            return 0, shuffled_row(self.seed, key // self._length, key % self._length, self._length, self.shuffle)
        n, local = len(rows), key - start
        cycle_seed = derive_seed(self.seed, "round", start) % (2**62)  # by its first key: a resumed run agrees
        return index, shuffled_row(cycle_seed, local // n, local % n, n, self.shuffle)

    def __getitem__(self, key: int) -> dict:
        index, row = self.locate(key)
        return {**self.rounds[index][1][row], STATE_KEY: int(key), ROUND_KEY: index}

    def __getattr__(self, name):
        # Never the wrapped dataset's protocols (its `__getitems__` would read keys as rows), nor `dataset` itself
        # before it is set (unpickling in a dataloader worker).
        if name in ("dataset", "rounds") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
