"""Tasks: prompts + references + a verifier, what `evaluate_few_step` scores.

Users bring their own with `Task(...)` or `Task.from_dataset(...)`. The synthetic toy tasks of the demo, the tests and
the benchmarks (arithmetic, permutation, ...) are generators of `Task`s in `trl_t3d.toy.tasks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .verifiers import get_verifier


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


__all__ = ["Task"]
