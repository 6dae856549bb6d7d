"""Synthetic toy tasks for the offline demo, the tests and the benchmarks (never imported by the core).

Each generator returns a `trl_t3d.evaluation.Task`. The tasks are made for the character-level tokenizer of
`trl_t3d.testing` (one token per character) and probe the two regimes parallel decoding cares about:

- `arithmetic` ("123+45=" -> "168"): one right answer whose digits depend on each other through carries;
- `permutation` ("perm:dacb" -> any ordering of the symbols, each exactly once): many right answers whose tokens
  are strongly correlated. Decoding several positions in one step from independent per-position marginals mixes
  orderings into invalid strings (duplicated or missing symbols), the failure few-step distillation must fix;
- `permutation_skewed` (same prompts and verifier, 4 symbols): the training orderings follow a fixed skewed mixture
  whose joint mode (what one-position-at-a-time decoding finds) is not the per-position argmax (what one-shot
  decoding commits), like "New York" / "Los Angeles" -> "New Angeles". The mode is a learnable rule, so a student
  can learn to write it in one step; with uniform orderings (`permutation`) there is no mode to learn at all;
- `two_way_sort` ("sort:dacbe" -> "abcde" or "edcba"): exactly two right answers with 50/50 per-position marginals,
  the smallest case where parallel decoding mixes modes and a mode-seeking student can pick one.

Generators are deterministic given `seed`; train and test splits are disjoint by construction (a stable hash of the
prompt decides the split), so a model pretrained on `split="train"` is tested on unseen prompts.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

from ..evaluation.tasks import Task
from ..evaluation.verifiers import number_verifier, permutation_verifier


def _in_split(prompt: str, split: str, test_fraction: float) -> bool:
    """Stable (seed-independent) split of the prompt space: the same prompt is always on the same side."""
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    is_test = (zlib.crc32(prompt.encode()) % 10_000) < test_fraction * 10_000
    return is_test == (split == "test")


def _draw(num_examples: int, split: str, seed: int, test_fraction: float, make_one, space_size: int):
    if num_examples <= 0:
        raise ValueError(f"`num_examples` must be positive, got {num_examples}.")
    rng = random.Random(f"{seed}-{split}")
    rows, tries = [], 0
    while len(rows) < num_examples:
        tries += 1
        if tries > 50 * num_examples + 1000:
            raise ValueError(
                f"Could not draw {num_examples} distinct '{split}' examples (prompt space ~{space_size}); ask for fewer."
            )
        row = make_one(rng)
        if _in_split(row[0], split, test_fraction):
            rows.append(row)
    return rows


def _task(name: str, rows, references, verifier, max_new_tokens: int, block_length: int, **metadata) -> Task:
    """A toy task from drawn `(prompt, target)` rows: the targets are its training completions."""
    return Task(
        name=name,
        prompts=[p for p, _ in rows],
        references=list(references),
        verifier=verifier,
        targets=[t for _, t in rows],
        max_new_tokens=max_new_tokens,
        block_length=block_length,
        metadata=metadata,
    )


def arithmetic_task(
    num_examples: int = 256,
    split: str = "test",
    seed: int = 0,
    min_digits: int = 2,
    max_digits: int = 2,
    test_fraction: float = 0.1,
) -> Task:
    """Addition of two `min_digits`..`max_digits`-digit numbers: "57+68=" -> "125" (most significant digit first,
    so each answer digit depends on the carries of the digits after it: positions are strongly dependent).

    The default (2-digit operands, 2- or 3-digit sums) is what a toy model learns in a few CPU minutes; 3-digit
    operands (`max_digits=3`) need a longer pretraining."""
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"Need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}.")

    def number(rng):
        digits = rng.randint(min_digits, max_digits)
        return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)

    def make_one(rng):
        a, b = number(rng), number(rng)
        return f"{a}+{b}=", str(a + b)

    rows = _draw(num_examples, split, seed, test_fraction, make_one, (10**max_digits) ** 2)
    references = [int(a) for _, a in rows]
    metadata = {"split": split, "seed": seed, "min_digits": min_digits, "max_digits": max_digits}
    return _task("arithmetic", rows, references, number_verifier, 8, 8, **metadata)


def _check_symbols(symbols: str, min_length: int, max_length: int) -> None:
    """Symbol tasks draw `min_length`..`max_length` distinct symbols per prompt."""
    if len(set(symbols)) != len(symbols) or not symbols:
        raise ValueError(f"`symbols` must be distinct characters, got {symbols!r}.")
    if not 2 <= min_length <= max_length <= len(symbols):
        raise ValueError(f"Need 2 <= min_length <= max_length <= {len(symbols)}, got {min_length}, {max_length}.")


def _symbol_metadata(split: str, seed: int, symbols: str, min_length: int, max_length: int, **extra) -> dict:
    return {
        "split": split,
        "seed": seed,
        "symbols": symbols,
        "min_length": min_length,
        "max_length": max_length,
        **extra,
    }


# Orderings of `permutation_skewed` (indices into the prompt's symbols) and their weights. For "perm:abcd" the joint
# mode is "abdc" (3/7), and decoding one position at a time finds it: "a" first (5/7), then "b" (4/5), then "d" and
# "c" (3/4 each). The per-position argmax is "abdd" ("d" is last in 4/7 of the data): decoding the four symbols in
# one step repeats "d".
SKEWED_ORDERINGS: tuple[tuple[tuple[int, ...], int], ...] = (
    ((0, 1, 3, 2), 3),
    ((0, 1, 2, 3), 1),
    ((0, 2, 1, 3), 1),
    ((1, 2, 0, 3), 2),
)


def permutation_task(
    num_examples: int = 256,
    split: str = "test",
    seed: int = 0,
    symbols: str = "abcdefgh",
    min_length: int | None = None,
    max_length: int | None = None,
    test_fraction: float = 0.1,
    orderings: str = "uniform",
) -> Task:
    """ "perm:dacb" -> any ordering of the given symbols, each exactly once (n! valid answers).

    `min_length`..`max_length` symbols per prompt (default 4..5; exactly 4 with "skewed").
    `orderings` sets the training targets (every ordering is a right answer either way):
    - "uniform": a uniformly random ordering, so a model that fits the data has (nearly) uniform, uninformative
      per-position marginals: committing several positions in one step duplicates symbols. Which ordering
      one-position-at-a-time decoding picks is an arbitrary tie-break, so there is no mode a student can learn.
    - "skewed": 4 symbols, ordered by the fixed mixture `SKEWED_ORDERINGS` (task name "permutation_skewed"): the
      joint mode is a learnable rule but differs from the per-position argmax, so one-shot decoding fails while a
      student that learns the mode decodes it in one step.
    """
    if orderings not in ("uniform", "skewed"):
        raise ValueError(f"`orderings` must be 'uniform' or 'skewed', got {orderings!r}.")
    if orderings == "skewed":
        size = len(SKEWED_ORDERINGS[0][0])
        if {min_length, max_length} - {None, size}:
            raise ValueError(f"`orderings='skewed'` orders exactly {size} symbols; drop `min_length`/`max_length`.")
        min_length = max_length = size
    min_length = 4 if min_length is None else min_length
    max_length = 5 if max_length is None else max_length
    _check_symbols(symbols, min_length, max_length)
    skewed_orders, skewed_weights = zip(*SKEWED_ORDERINGS)

    def make_one(rng):
        chosen = rng.sample(symbols, rng.randint(min_length, max_length))
        if orderings == "skewed":
            order = rng.choices(skewed_orders, weights=skewed_weights)[0]
            target = [chosen[i] for i in order]
        else:
            target = chosen[:]
            rng.shuffle(target)
        return f"perm:{''.join(chosen)}", "".join(target)

    rows = _draw(num_examples, split, seed, test_fraction, make_one, len(symbols) ** max_length)
    name = "permutation" if orderings == "uniform" else "permutation_skewed"
    references = [p.split(":", 1)[1] for p, _ in rows]
    metadata = _symbol_metadata(split, seed, symbols, min_length, max_length, orderings=orderings)
    return _task(name, rows, references, permutation_verifier, 8, 8, **metadata)


def permutation_skewed_task(num_examples: int = 256, split: str = "test", seed: int = 0, **kwargs) -> Task:
    """`permutation_task(orderings="skewed")`: 4-symbol orderings whose joint mode differs from the per-position argmax."""
    return permutation_task(num_examples, split, seed, orderings="skewed", **kwargs)


def two_way_sort_task(
    num_examples: int = 256,
    split: str = "test",
    seed: int = 0,
    symbols: str = "abcdefgh",
    min_length: int = 4,
    max_length: int = 5,
    test_fraction: float = 0.1,
) -> Task:
    """ "sort:dacbe" -> the symbols sorted ascending ("abcde") or descending ("edcba"): exactly two valid answers.

    Each training target is ascending or descending at random (50/50, seeded), so a model that fits the data has
    50/50 per-position marginals (except the middle of odd lengths): committing several positions in one step mixes
    the two modes into invalid strings ("abdba"), while decoding one position at a time, or a student that commits
    to one mode, stays valid. References are `(ascending, descending)` for the "one_of" verifier.
    """
    _check_symbols(symbols, min_length, max_length)

    def make_one(rng):
        chosen = rng.sample(symbols, rng.randint(min_length, max_length))
        ascending = "".join(sorted(chosen))
        target = ascending if rng.random() < 0.5 else ascending[::-1]
        return f"sort:{''.join(chosen)}", target

    rows = _draw(num_examples, split, seed, test_fraction, make_one, len(symbols) ** max_length)
    references = []
    for prompt, _ in rows:
        ascending = "".join(sorted(prompt.split(":", 1)[1]))
        references.append((ascending, ascending[::-1]))
    metadata = _symbol_metadata(split, seed, symbols, min_length, max_length)
    return _task("two_way_sort", rows, references, "one_of", 8, 8, **metadata)


def reverse_task(
    num_examples: int = 256,
    split: str = "test",
    seed: int = 0,
    symbols: str = "abcdefghijklmnop",
    min_length: int = 4,
    max_length: int = 10,
    test_fraction: float = 0.1,
) -> Task:
    """ "rev:abcdef" -> "fedcba": one right answer, fixed by the prompt token for token, of varying length that spans
    several decoding blocks of 4. A control: parallel decoding has nothing to mix, so every budget should stay
    accurate; a method that hurts here hurts the easy case."""
    _check_symbols(symbols, min_length, max_length)

    def make_one(rng):
        chosen = "".join(rng.sample(symbols, rng.randint(min_length, max_length)))
        return f"rev:{chosen}", chosen[::-1]

    rows = _draw(num_examples, split, seed, test_fraction, make_one, len(symbols) ** max_length)
    metadata = _symbol_metadata(split, seed, symbols, min_length, max_length)
    return _task("reverse", rows, [t for _, t in rows], "exact", 16, 4, **metadata)


# Weights of the three phrases of every `phrase` category: A is the joint mode (0.45), but B and C agree on half of
# the positions (0.30 + 0.25 = 0.55 there), so the per-position argmax takes B/C's letters there and A's elsewhere.
PHRASE_WEIGHTS = (0.45, 0.30, 0.25)


def phrase_bank(num_categories: int = 32, length: int = 8, symbols: str = "abcdefghijklmnop", seed: int = 0):
    """Three phrases per category (A, B, C): B and C share the letters of a random half of the positions, where A
    differs; elsewhere all three differ. Deterministic in `seed`, independent of the split."""
    if len(symbols) < 3 or length < 2:
        raise ValueError(f"Need >= 3 symbols and length >= 2, got {len(symbols)} symbols and length {length}.")
    rng = random.Random(f"phrase-bank-{seed}")
    bank = []
    for _ in range(num_categories):
        shared = set(rng.sample(range(length), length // 2))
        a, b, c = [], [], []
        for position in range(length):
            x, y, z = rng.sample(symbols, 3)
            a.append(x)
            b.append(y)
            c.append(y if position in shared else z)
        bank.append(("".join(a), "".join(b), "".join(c)))
    return bank


def phrase_task(
    num_examples: int = 256,
    split: str = "test",
    seed: int = 0,
    num_categories: int = 32,
    length: int = 8,
    test_fraction: float = 0.1,
) -> Task:
    """ "say:07.42" -> one of category 7's three fixed phrases (the ".42" is noise that only makes prompts unique):
    many right answers, whose letters constrain each other across a whole phrase spanning two blocks of 4.

    Training targets follow `PHRASE_WEIGHTS`. The per-position argmax mixes phrase A's letters with B/C's shared ones
    into no phrase at all ("New York" + "Los Angeles" -> "New Angeles"), while decoding one position at a time commits
    a B/C letter first (the most confident) and then follows B, which a student can learn to write in one step.
    """
    if not 0 < num_categories <= 100:
        raise ValueError(f"`num_categories` must be in 1..100, got {num_categories}.")
    bank = phrase_bank(num_categories, length)

    def make_one(rng):
        category = rng.randrange(num_categories)
        phrase = rng.choices(bank[category], weights=PHRASE_WEIGHTS)[0]
        return f"say:{category:02d}.{rng.randrange(100):02d}", phrase

    rows = _draw(num_examples, split, seed, test_fraction, make_one, num_categories * 100)
    references = [bank[int(p[4:6])] for p, _ in rows]
    metadata = {"split": split, "seed": seed, "num_categories": num_categories, "length": length}
    return _task("phrase", rows, references, "one_of", 16, 4, **metadata)


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": arithmetic_task,
    "permutation": permutation_task,
    "permutation_skewed": permutation_skewed_task,
    "two_way_sort": two_way_sort_task,
    "reverse": reverse_task,
    "phrase": phrase_task,
}


def get_task(name: str, **kwargs) -> Task:
    """A built-in task by name (see `BUILTIN_TASKS`); kwargs go to its generator (num_examples, split, seed)."""
    if name not in BUILTIN_TASKS:
        raise ValueError(
            f"Unknown built-in task {name!r}. Choose one of {sorted(BUILTIN_TASKS)}, or build your own with "
            "`Task(name, prompts, references, verifier)` / `Task.from_dataset(...)`."
        )
    return BUILTIN_TASKS[name](**kwargs)


__all__ = [
    "BUILTIN_TASKS",
    "SKEWED_ORDERINGS",
    "PHRASE_WEIGHTS",
    "arithmetic_task",
    "get_task",
    "permutation_skewed_task",
    "permutation_task",
    "phrase_bank",
    "phrase_task",
    "reverse_task",
    "two_way_sort_task",
]
