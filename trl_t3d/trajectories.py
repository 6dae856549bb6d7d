"""The trajectory dataset schema and its validation.

A trajectory dataset has one row per teacher completion:

- `prompt_ids` (list[int], no padding), `completion_ids` (list[int], up to and including the first EOS if any),
- `step_map` (list[int], same length as `completion_ids`, all >= 0): the 0-based global index of the denoising
  forward pass at which each completion token was committed,
- `block_length` (int): the block length used by the decoder,
- optionally `prompt` (str or chat messages) and `completion` (str).

Dataset-level metadata (teacher, decoding settings) is stored as JSON in `dataset.info.description`.

Text datasets (`prompt`/`completion` strings with a token-level `step_map`) are accepted: the completion is tokenized
without special tokens and must give exactly `len(step_map)` tokens, otherwise the step map would be out of line
(one of the T3D reference code's pitfalls). Keep the decoder's token ids when you can.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from .resolved import render_prompt

logger = logging.getLogger(__name__)

TRAJECTORY_COLUMNS = ("prompt_ids", "completion_ids", "step_map", "block_length")


@dataclass
class TrajectoryStats:
    """What `prepare_trajectory_dataset` changed: nothing is dropped or cut without being counted here."""

    num_examples: int = 0
    num_kept: int = 0
    num_truncated_prompts: int = 0
    num_dropped_long_completions: int = 0
    num_dropped_empty_completions: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def dataset_metadata(dataset) -> dict:
    """The JSON metadata a trajectory dataset carries in `dataset.info.description` ({} when absent or not JSON)."""
    description = getattr(getattr(dataset, "info", None), "description", None)
    if not description:
        return {}
    try:
        meta = json.loads(description)
    except (TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def resolve_special_ids(processing_class, mask_token_id: int | None = None, pad_token_id: int | None = None):
    """(mask_token_id, pad_token_id) from the arguments or the tokenizer, with the errors DESIGN.md asks for."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if mask_token_id is None:
        mask_token_id = getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None
    if mask_token_id is None:
        raise ValueError(
            "The tokenizer has no mask token and no `mask_token_id` was given. Pass `mask_token_id=...` (in "
            "`DDOConfig`), or add one: `tokenizer.add_special_tokens({'mask_token': '<|mask|>'})` then "
            "`model.resize_token_embeddings(len(tokenizer))`."
        )
    if pad_token_id is None and tokenizer is not None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "eos_token_id", None)
    if pad_token_id is not None and int(pad_token_id) == int(mask_token_id):
        raise ValueError(
            f"pad_token_id == mask_token_id == {mask_token_id}: padding would be read as noise. Give the tokenizer a "
            "distinct pad token (e.g. `tokenizer.pad_token = tokenizer.eos_token`)."
        )
    return int(mask_token_id), (int(pad_token_id) if pad_token_id is not None else None)


PROMPT_COLUMNS = ("prompt", "messages", "prompt_ids")
COMPLETION_COLUMNS = ("completion_ids", "completion")


def is_prompt_only(dataset, prompt_column: str = "prompt") -> bool:
    """True for prompts the teacher should decode first; False for trajectories (a `step_map` column).

    Completions without a `step_map` are refused rather than silently thrown away and re-collected: either a
    trajectory dataset lost its step map, or the completions are reference answers, which T3D does not train on.
    """
    columns = set(getattr(dataset, "column_names", None) or [])
    if "step_map" in columns or not columns & {prompt_column, *PROMPT_COLUMNS}:
        return False
    completions = sorted(columns & set(COMPLETION_COLUMNS))
    if completions:
        raise ValueError(
            f"The dataset has {completions} but no `step_map` column (columns: {sorted(columns)}), so it is neither "
            "trajectories nor prompts only. If these are trajectories, restore their `step_map` (it is dropped by "
            "e.g. `select_columns`). To let the teacher collect fresh trajectories from the prompts instead, drop the "
            f"completions: `dataset = dataset.remove_columns({completions})`."
        )
    return True


def _as_int_list(value, name: str, index) -> list[int]:
    if value is None:
        raise ValueError(f"Example {index}: `{name}` is missing.")
    if isinstance(value, (str, bytes)):  # "0123" would otherwise read as [0, 1, 2, 3] and "10" as [1, 0]
        raise ValueError(f"Example {index}: `{name}` must be a list of ints, got the string {value[:40]!r}.")
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError) as err:
        raise ValueError(f"Example {index}: `{name}` must be a list of ints, got {type(value).__name__}.") from err


def validate_trajectory_example(
    example: dict,
    *,
    mask_token_id: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    block_length: int | None = None,
    index=None,
) -> tuple[dict | None, str]:
    """Check one tokenized trajectory; return `(example or None, status)`.

    status is "ok", "truncated_prompt" (cut from the left to `max_prompt_length`), "dropped_long_completion" or
    "dropped_empty_completion" (the whole example is dropped: a cut completion would orphan its step map).
    Structural problems raise a `ValueError` naming the example and the fix.
    """
    prompt_ids = _as_int_list(example.get("prompt_ids"), "prompt_ids", index)
    completion_ids = _as_int_list(example.get("completion_ids"), "completion_ids", index)
    step_map = _as_int_list(example.get("step_map"), "step_map", index)
    block_length = (
        example.get("block_length", block_length) if example.get("block_length") is not None else block_length
    )
    if block_length is None or int(block_length) < 1:
        raise ValueError(
            f"Example {index}: no valid `block_length` (got {block_length}). Add a `block_length` column, put it in "
            "the dataset metadata, or set `DDOConfig.block_length`."
        )
    block_length = int(block_length)
    if len(step_map) != len(completion_ids):
        raise ValueError(
            f"Example {index}: `step_map` has {len(step_map)} entries but the completion has {len(completion_ids)} "
            "tokens. The step map must be token-aligned with `completion_ids`: keep the decoder's token ids instead "
            "of re-tokenizing decoded text."
        )
    if any(s < 0 for s in step_map):
        raise ValueError(
            f"Example {index}: `step_map` has negative steps ({min(step_map)}). -1 marks positions never decoded "
            "(after an early EOS stop): cut `completion_ids` and `step_map` after the first EOS."
        )
    # Semi-autoregressive decoding finishes block b before it starts block b + 1.
    for start in range(block_length, len(step_map), block_length):
        if min(step_map[start : start + block_length]) <= max(step_map[start - block_length : start]):
            raise ValueError(
                f"Example {index}: `step_map` is out of range for block_length={block_length}: a step of block "
                f"{start // block_length} is not after every step of the previous block. The step map must be the "
                "global forward index of a semi-autoregressive decoder with this block length (check `block_length`)."
            )
    if mask_token_id in prompt_ids or mask_token_id in completion_ids:
        where = "prompt_ids" if mask_token_id in prompt_ids else "completion_ids"
        raise ValueError(
            f"Example {index}: the mask token {mask_token_id} occurs inside `{where}`. Training data must be clean "
            "tokens; remove the example or fix the decoder output."
        )
    if not completion_ids:
        return None, "dropped_empty_completion"
    if max_completion_length is not None and len(completion_ids) > max_completion_length:
        return None, "dropped_long_completion"
    status = "ok"
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
        status = "truncated_prompt"
    out = dict(example)
    out.update(prompt_ids=prompt_ids, completion_ids=completion_ids, step_map=step_map, block_length=block_length)
    return out, status


def _tokenize_text(example, tokenizer, index) -> dict:
    """Token ids for a text example: chat prompts through the chat template, completions without special tokens."""
    out = {}
    if "prompt_ids" not in example or example.get("prompt_ids") is None:
        column = "prompt" if example.get("prompt") is not None else "messages"
        if example.get(column) is None:
            raise ValueError(f"Example {index}: neither `prompt_ids` nor `prompt`/`messages` is present.")
        # The one renderer collection and evaluation use, so a prompt is the same token ids everywhere.
        out["prompt_ids"] = render_prompt(example[column], tokenizer, source_column=column)[0]
    if "completion_ids" not in example or example.get("completion_ids") is None:
        completion = example.get("completion")
        if completion is None:
            raise ValueError(f"Example {index}: neither `completion_ids` nor `completion` is present.")
        if isinstance(completion, list):  # conversational completion: one assistant message
            completion = "".join(m["content"] for m in completion)
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        step_map = example.get("step_map") or []
        if len(ids) != len(step_map):
            raise ValueError(
                f"Example {index}: the text completion tokenizes to {len(ids)} tokens but `step_map` has "
                f"{len(step_map)} entries, so the step map cannot be aligned. Store the decoder's `completion_ids` "
                "instead of text (retokenizing decoded text does not round-trip)."
            )
        out["completion_ids"] = ids
    return out


def prepare_trajectory_dataset(
    dataset,
    processing_class,
    max_prompt_length: int | None = 512,
    max_completion_length: int | None = 1024,
    *,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    block_length: int | None = None,
    return_stats: bool = False,
):
    """Validate and normalize a trajectory dataset to the schema's four columns (+ any extra column it had).

    Prompts over `max_prompt_length` are cut from the left (the end of the prompt, next to the completion, is kept);
    completions over `max_completion_length` and empty completions drop their whole example. Every change is counted,
    logged as a warning, and returned when `return_stats=True`.
    """
    mask_token_id, _ = resolve_special_ids(processing_class, mask_token_id, pad_token_id)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    columns = set(dataset.column_names)
    if len(dataset) == 0:
        raise ValueError(
            f"The trajectory dataset is empty (0 rows; columns: {sorted(columns)}). Check the split, filters and "
            "`max_samples`, or collect trajectories first with `collect_trajectories`."
        )
    if "step_map" not in columns:
        raise ValueError(
            f"Not a trajectory dataset: no `step_map` column (columns: {sorted(columns)}). Give trajectories "
            "(`prompt_ids`, `completion_ids`, `step_map`, `block_length`; see `trl_t3d.collect_trajectories`), or "
            "prompts only in a `prompt`, `messages` or `prompt_ids` column for `DDOTrainer` to collect from (e.g. "
            "`dataset.rename_column('question', 'prompt')`)."
        )
    meta = dataset_metadata(dataset)
    if block_length is None and "block_length" not in columns:
        block_length = meta.get("block_length")
    needs_text = "prompt_ids" not in columns or "completion_ids" not in columns

    def _process(batch, indices):
        size = len(indices)
        out = {key: [] for key in batch}
        out.update({key: [] for key in (*TRAJECTORY_COLUMNS, "_status")})
        for row in range(size):
            example = {key: batch[key][row] for key in batch}
            if needs_text:
                if tokenizer is None:
                    raise ValueError("Text trajectories need a `processing_class` to tokenize them.")
                example.update(_tokenize_text(example, tokenizer, indices[row]))
            checked, status = validate_trajectory_example(
                example,
                mask_token_id=mask_token_id,
                max_prompt_length=max_prompt_length,
                max_completion_length=max_completion_length,
                block_length=block_length,
                index=indices[row],
            )
            checked = checked or {**example, "block_length": example.get("block_length") or block_length}
            for key in out:
                out[key].append(status if key == "_status" else checked.get(key))
        return out

    processed = dataset.map(_process, batched=True, with_indices=True, desc="Validating trajectories")
    statuses = processed["_status"]
    stats = TrajectoryStats(
        num_examples=len(statuses),
        num_truncated_prompts=statuses.count("truncated_prompt"),
        num_dropped_long_completions=statuses.count("dropped_long_completion"),
        num_dropped_empty_completions=statuses.count("dropped_empty_completion"),
    )
    processed = processed.filter(lambda s: not s.startswith("dropped"), input_columns="_status").remove_columns(
        "_status"
    )
    stats.num_kept = len(processed)
    if stats.num_truncated_prompts:
        logger.warning(
            "%d of %d prompts were longer than max_prompt_length=%s and were cut from the left.",
            stats.num_truncated_prompts,
            stats.num_examples,
            max_prompt_length,
        )
    if stats.num_dropped_long_completions:
        logger.warning(
            "%d of %d examples were dropped: completion longer than max_completion_length=%s (a cut completion "
            "would not match its step map).",
            stats.num_dropped_long_completions,
            stats.num_examples,
            max_completion_length,
        )
    if stats.num_dropped_empty_completions:
        logger.warning(
            "%d of %d examples were dropped: empty completion.",
            stats.num_dropped_empty_completions,
            stats.num_examples,
        )
    if stats.num_kept == 0:
        raise ValueError(f"No trajectory is left after validation ({stats.to_dict()}).")
    return (processed, stats) if return_stats else processed


def check_training_block(dataset, block_length: int | None, name: str) -> None:
    """A training block must be whole decoding blocks, or its states mix blocks the decoder never had open together."""
    if not block_length or "block_length" not in dataset.column_names or len(dataset) == 0:
        return
    from collections import Counter

    decoded = Counter(int(b) for b in dataset["block_length"])
    bad = {b: n for b, n in sorted(decoded.items()) if block_length % b}
    if bad:
        raise ValueError(
            f"`block_length`={block_length} (training) is not a multiple of the decoding block length of "
            f"{sum(bad.values())} {name} trajectories (decoded with blocks of {sorted(bad)}): their states would "
            f"straddle decoding blocks and mask tokens in an order no decoder followed. Set `block_length` to a "
            f"multiple of {max(bad)} (T3D trains SDAR with 8 over decoding blocks of 4), or None to use the "
            "decoding block."
        )
