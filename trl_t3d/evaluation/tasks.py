"""Tasks: prompts + references + a verifier; built-in synthetic tasks for offline demos and benchmarks.

A `Task` is what `evaluate_few_step` scores. Users bring their own with `Task(...)` or `Task.from_dataset(...)`.
The built-in tasks are made for the character-level tokenizer of `trl_t3d.testing` (one token per character) and
probe the two regimes parallel decoding cares about:

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .verifiers import get_verifier, number_verifier, permutation_verifier


@dataclass
class Task:
    """An evaluation task: prompts, one reference per prompt, and the verifier that judges completions.

    Args:
        name (`str`): name used in reports and plots.
        prompts (`list[str]` or `list[list[dict]]`): plain strings (rendered as they are, or as one user message with
            `apply_chat_template=True`) or conversations (`[{"role": "user", "content": ...}, ...]`, rendered with the
            chat template), by the same rule as collection and training (`trl_t3d.resolved.render_prompt`).
        references (`list`): what the verifier compares each completion with (a number, a string, a set of valid
            answers, a predicate...).
        verifier (`str` or callable): `verifier(completion: str, reference) -> bool`, or a name of
            `trl_t3d.evaluation.verifiers.VERIFIERS` ("number", "boxed", "exact", "one_of", "permutation").
        system_prompt (`str`, *optional*): prepended as a system message.
        prompt_suffix (`str`, *optional*): appended to the (last user message of the) prompt, e.g. a reasoning
            instruction "Put your final answer within \\boxed{}.".
        targets (`list[str]`, *optional*): one valid completion per prompt, for training (pretraining/SFT data).
        max_new_tokens (`int`, *optional*): completion budget this task needs; a default for `evaluate_few_step`.
        block_length (`int`, *optional*): decoding block length this task was designed for.
    """

    name: str
    prompts: list
    references: list
    verifier: Any = "exact"
    system_prompt: str | None = None
    prompt_suffix: str | None = None
    targets: list[str] | None = None
    max_new_tokens: int | None = None
    block_length: int | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.prompts, self.references = list(self.prompts), list(self.references)
        if len(self.prompts) != len(self.references):
            raise ValueError(
                f"Task '{self.name}' has {len(self.prompts)} prompts but {len(self.references)} references; give "
                "exactly one reference per prompt."
            )
        if self.targets is not None and len(self.targets) != len(self.prompts):
            raise ValueError(f"Task '{self.name}': `targets` must have one entry per prompt ({len(self.prompts)}).")
        self.verifier = get_verifier(self.verifier)

    def __len__(self) -> int:
        return len(self.prompts)

    def verify(self, completion: str, index: int) -> bool:
        return bool(self.verifier(completion, self.references[index]))

    def messages(self, index: int) -> list[dict]:
        """The conversation of prompt `index` (system prompt and suffix applied)."""
        prompt = self.prompts[index]
        messages = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if self.prompt_suffix:
            for message in reversed(messages):
                if message.get("role") == "user":
                    message["content"] = f"{message.get('content', '')}{self.prompt_suffix}"
                    break
            else:
                raise ValueError(f"Task '{self.name}': `prompt_suffix` needs a user message in every prompt.")
        if self.system_prompt and not (messages and messages[0].get("role") == "system"):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def prompt(self, index: int, apply_chat_template: bool | None = None):
        """Prompt `index` as `trl_t3d.resolved.render_prompt` takes it: the conversation (`messages`) when the task's
        prompt is one or `apply_chat_template=True`, else the plain text (system prompt, prompt and suffix joined)."""
        use_template = isinstance(self.prompts[index], list) if apply_chat_template is None else apply_chat_template
        messages = self.messages(index)
        return messages if use_template else "".join(m.get("content", "") for m in messages)

    def prompt_ids(self, tokenizer, apply_chat_template: bool | None = None) -> list[list[int]]:
        """Token ids of every prompt, ready for decoding (no padding), by the renderer collection and training use.

        `tokenizer` is a tokenizer or a `DiffusionLM`. `apply_chat_template=None` follows TRL: the chat template for
        conversational prompts only; `True`: plain strings too (as one user message); `False`: never.
        """
        from ..resolved import DiffusionLM, render_prompt

        if isinstance(tokenizer, DiffusionLM):
            return [tokenizer.render_prompt(self.prompt(i, apply_chat_template)) for i in range(len(self))]
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        return [render_prompt(self.prompt(i, apply_chat_template), tokenizer)[0] for i in range(len(self))]

    def subset(self, indices: Sequence[int]) -> Task:
        """A task over the given prompt indices (e.g. the first n for a quick run)."""
        pick = list(indices)
        return Task(
            name=self.name,
            prompts=[self.prompts[i] for i in pick],
            references=[self.references[i] for i in pick],
            verifier=self.verifier,
            system_prompt=self.system_prompt,
            prompt_suffix=self.prompt_suffix,
            targets=None if self.targets is None else [self.targets[i] for i in pick],
            max_new_tokens=self.max_new_tokens,
            block_length=self.block_length,
            metadata=dict(self.metadata),
        )

    @classmethod
    def from_dataset(
        cls,
        dataset,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        verifier: str | Callable = "number",
        *,
        name: str | None = None,
        system_prompt: str | None = None,
        prompt_suffix: str | None = None,
        max_new_tokens: int | None = None,
        block_length: int | None = None,
    ) -> Task:
        """A task from a `datasets.Dataset` (or a list of dicts) with a prompt column and an answer column."""
        columns = dataset.column_names if hasattr(dataset, "column_names") else sorted(dataset[0]) if dataset else []
        for column, flag in ((prompt_column, "prompt_column"), (answer_column, "answer_column")):
            if column not in columns:
                raise ValueError(
                    f"No column '{column}' in the dataset (columns: {sorted(columns)}). Pass `{flag}=...`."
                )
        if hasattr(dataset, "column_names"):
            prompts, references = list(dataset[prompt_column]), list(dataset[answer_column])
        else:
            prompts = [row[prompt_column] for row in dataset]
            references = [row[answer_column] for row in dataset]
        return cls(
            name=name or getattr(getattr(dataset, "info", None), "dataset_name", None) or "custom",
            prompts=prompts,
            references=references,
            verifier=verifier,
            system_prompt=system_prompt,
            prompt_suffix=prompt_suffix,
            max_new_tokens=max_new_tokens,
            block_length=block_length,
        )


# ------------------------------------------------------------------------------------------------ built-in tasks
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
    return Task(
        name="arithmetic",
        prompts=[p for p, _ in rows],
        references=[int(a) for _, a in rows],
        verifier=number_verifier,
        targets=[a for _, a in rows],
        max_new_tokens=8,
        block_length=8,
        metadata={"split": split, "seed": seed, "min_digits": min_digits, "max_digits": max_digits},
    )


def _check_symbols(symbols: str, min_length: int, max_length: int) -> None:
    """Symbol tasks draw `min_length`..`max_length` distinct symbols per prompt."""
    if len(set(symbols)) != len(symbols) or not symbols:
        raise ValueError(f"`symbols` must be distinct characters, got {symbols!r}.")
    if not 2 <= min_length <= max_length <= len(symbols):
        raise ValueError(f"Need 2 <= min_length <= max_length <= {len(symbols)}, got {min_length}, {max_length}.")


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
    return Task(
        name="permutation" if orderings == "uniform" else "permutation_skewed",
        prompts=[p for p, _ in rows],
        references=[p.split(":", 1)[1] for p, _ in rows],
        verifier=permutation_verifier,
        targets=[t for _, t in rows],
        max_new_tokens=8,
        block_length=8,
        metadata={
            "split": split,
            "seed": seed,
            "symbols": symbols,
            "min_length": min_length,
            "max_length": max_length,
            "orderings": orderings,
        },
    )


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
    return Task(
        name="two_way_sort",
        prompts=[p for p, _ in rows],
        references=references,
        verifier="one_of",
        targets=[t for _, t in rows],
        max_new_tokens=8,
        block_length=8,
        metadata={
            "split": split,
            "seed": seed,
            "symbols": symbols,
            "min_length": min_length,
            "max_length": max_length,
        },
    )


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
    return Task(
        name="reverse",
        prompts=[p for p, _ in rows],
        references=[t for _, t in rows],
        verifier="exact",
        targets=[t for _, t in rows],
        max_new_tokens=16,
        block_length=4,
        metadata={
            "split": split,
            "seed": seed,
            "symbols": symbols,
            "min_length": min_length,
            "max_length": max_length,
        },
    )


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
    return Task(
        name="phrase",
        prompts=[p for p, _ in rows],
        references=[bank[int(p[4:6])] for p, _ in rows],
        verifier="one_of",
        targets=[t for _, t in rows],
        max_new_tokens=16,
        block_length=4,
        metadata={"split": split, "seed": seed, "num_categories": num_categories, "length": length},
    )


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
    "Task",
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
