"""Trajectory collection: the teacher decodes prompts slowly and records when each token was committed.

`collect_trajectories` turns a prompt dataset into a trajectory dataset (schema in `trl_t3d.trajectories`):

1. prompts -> token ids by the model's one renderer (`DiffusionLM.render_prompt`: chat template for conversational
   prompts, as TRL does; optional reasoning suffix);
2. shards of `shard_size` prompts in dataset order; each process of an `accelerate launch` takes every n-th shard;
3. inside a shard, prompts sorted by length and decoded in left-padded batches by the one decode loop
   (`generation.decode_prompts`); each prompt samples from its own generator, seeded with `seed` + its index in the
   dataset, so the trajectories do not depend on the batch size, the shard size or the number of processes;
4. the decoder's token ids are kept (never re-tokenized text), cut after the first EOS together with the step map;
5. finished shards are written to `output_dir` (resumable) or gathered in memory; rows come back in dataset order.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import os
import shutil
from types import SimpleNamespace
from typing import Any

import torch

from .resolved import DiffusionLM, render_prompt  # noqa: F401  (render_prompt: the one prompt renderer)

logger = logging.getLogger(__name__)

DEFAULT_REASONING_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
MANIFEST_NAME = "collection_manifest.json"
TRAJECTORY_FORMAT = "trl_t3d.trajectories/v1"


# ------------------------------------------------------------------------------------------------ prompts
def _prompt_source_column(column_names, prompt_column: str) -> str:
    """The column prompts are read from: `prompt_column`, else `messages`, else `prompt_ids`."""
    for name in (prompt_column, "messages", "prompt_ids"):
        if name in column_names:
            return name
    raise ValueError(
        f"The dataset has no prompt column: looked for '{prompt_column}', 'messages' and 'prompt_ids' but found "
        f"{sorted(column_names)}. Rename your prompt column (`dataset.rename_column('question', 'prompt')`) or pass "
        "`prompt_column=...` (CLI: `--prompt_column`)."
    )


# ------------------------------------------------------------------------------------------------ helpers
def _config_dict(generation_config) -> dict:
    """A JSON-safe dict of the decoding settings (GenerationConfig subclass or plain dict)."""
    if generation_config is None:
        return {}
    if isinstance(generation_config, dict):
        raw = dict(generation_config)
    elif hasattr(generation_config, "to_diff_dict"):
        raw = generation_config.to_diff_dict()
    else:
        raw = dict(vars(generation_config))
    return {k: v for k, v in raw.items() if not k.startswith("_") and _json_safe(v)}


def _json_safe(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _get(config, name, default=None):
    if isinstance(config, dict):
        return config.get(name, default)
    value = getattr(config, name, default)
    return default if value is None else value


def _eos_ids(generation_config, adapter) -> list[int]:
    eos = _get(generation_config, "eos_token_id")
    if eos is None:
        return list(adapter.eos_token_ids)
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _with_setting(generation_config, name: str, value):
    """A copy of the decoding settings (config object or dict) with `name` set to `value`."""
    if isinstance(generation_config, dict):
        return {**generation_config, name: value}
    config = copy.deepcopy(generation_config)
    setattr(config, name, value)
    return config


def _with_stop_at_eos(generation_config, value: bool):
    """A copy of the decoding settings (config object or dict) with `stop_at_eos` set."""
    return _with_setting(generation_config, "stop_at_eos", value)


def _decoding_block_length(model, adapter, generation_config) -> int:
    """The block length the decoder will use for these settings (`generation.decode.decoding_block_length`): the
    given `block_length`, else a block-causal model's trained block when it divides `max_new_tokens`, else one block."""
    from types import SimpleNamespace

    from .generation.decode import decoding_block_length

    settings = SimpleNamespace(
        block_length=_get(generation_config, "block_length"),
        max_new_tokens=int(_get(generation_config, "max_new_tokens")),
    )
    return decoding_block_length(model, adapter, settings)


def cut_after_eos(completion: list[int], step_map: list[int], eos_token_ids) -> tuple[list[int], list[int], bool]:
    """Cut a completion (and its step map) after its first EOS; also say whether an EOS was found."""
    eos = set(int(e) for e in eos_token_ids)
    for i, token in enumerate(completion):
        if token in eos:
            return completion[: i + 1], step_map[: i + 1], True
    return completion, step_map, False


def _fingerprint(prompt_ids: list[list[int]], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for ids in prompt_ids:
        digest.update(json.dumps(ids).encode())
    return digest.hexdigest()


def _shard_path(output_dir: str, index: int, num_shards: int) -> str:
    return os.path.join(output_dir, f"shard-{index:05d}-of-{num_shards:05d}.parquet")


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


# ------------------------------------------------------------------------------------------------ decoding
def _decode_shard(
    resolved: DiffusionLM,
    generation_config,
    prompts: list[list[int]],
    *,
    batch_size: int,
    eos_token_ids,
    seeds: list[int] | None,
    progress,
    cut_at_eos: bool = True,
) -> list[dict]:
    """Decode one shard's prompts (`generation.decode_prompts`: sorted by length, left-padded batches, prompt i
    seeded with `seeds[i]`) and return its rows in the shard's order."""
    from .generation import decode_prompts

    adapter = resolved.adapter
    decoded = decode_prompts(
        resolved.model,
        prompts,
        generation_config,
        adapter=adapter,
        processing_class=resolved.tokenizer,
        batch_size=batch_size,
        seeds=seeds,
        pad_token_id=adapter.pad_token_id,
        progress=progress,
        device=_model_device(resolved.model),
    )
    mask_token_id = adapter.mask_token_id
    rows = []
    for prompt, out in zip(prompts, decoded):
        completion, step_map, has_eos = out.completion_ids, out.step_map, None
        if cut_at_eos:
            completion, step_map, has_eos = cut_after_eos(completion, step_map, eos_token_ids)
        else:
            has_eos = any(t in set(eos_token_ids) for t in completion)
        if len(step_map) != len(completion):
            raise RuntimeError(
                f"The decoder's step_map ({len(out.step_map)} entries) is shorter than its completion "
                f"({len(out.completion_ids)} tokens)."
            )
        if any(s < 0 for s in step_map):
            raise RuntimeError(
                "The decoder left undecoded positions (step -1) before the first EOS: the trajectory is "
                "incomplete. This is a bug of the decoder; please report it with the generation config."
            )
        if mask_token_id is not None and mask_token_id in completion:
            raise RuntimeError("The decoder left mask tokens in a completion; the trajectory is incomplete.")
        rows.append(dict(prompt_ids=list(prompt), completion_ids=completion, step_map=step_map, has_eos=has_eos))
    return rows


def _plan_collection(
    model,
    processing_class,
    dataset,
    generation_config,
    *,
    adapter,
    source_column,
    teacher_name,
    teacher_revision,
    reasoning_suffix,
    apply_chat_template,
    shard_size,
    seed,
    keep_full_canvas,
) -> SimpleNamespace:
    """Everything a collection is decided by, before any decoding: the resolved model, the decoding settings as the
    decoder will use them, the rendered prompts, and the fingerprint of it all."""
    resolved = DiffusionLM.from_model(
        model, processing_class, adapter=adapter, mask_token_id=_get(generation_config, "mask_token_id")
    )
    model, adapter = resolved.model, resolved.adapter
    if adapter.pad_token_id is None:
        raise ValueError("No pad token: set `tokenizer.pad_token` (e.g. to the EOS token) to batch prompts.")
    max_new_tokens = _get(generation_config, "max_new_tokens")
    if not max_new_tokens:
        raise ValueError("`generation_config.max_new_tokens` must be set: it is the teacher's completion budget.")
    block_length = _decoding_block_length(model, adapter, generation_config)
    if not _get(generation_config, "block_length") and block_length != int(max_new_tokens):
        # The decoder falls back to the model's trained block (SDAR's `block_size`, DiffusionGemma's canvas): say it
        # in the settings, so the recorded block, the fingerprint and the decoding are one and the same.
        generation_config = _with_setting(generation_config, "block_length", block_length)
    eos_token_ids = _eos_ids(generation_config, adapter)
    full_canvas = (not adapter.block_causal) if keep_full_canvas is None else bool(keep_full_canvas)
    if full_canvas:  # decode every position, as LLaDA's reference does, so the whole canvas has a step
        generation_config = _with_stop_at_eos(generation_config, False)

    # Prompts -> ids, in dataset order
    prompt_ids, prompt_texts = [], []
    for value in dataset[source_column]:
        ids, text = resolved.render_prompt_and_text(
            value,
            source_column=source_column,
            reasoning_suffix=reasoning_suffix,
            apply_chat_template=apply_chat_template,
        )
        if not ids:
            raise ValueError("A prompt renders to zero tokens; remove empty prompts from the dataset.")
        prompt_ids.append(ids)
        prompt_texts.append(text)

    teacher_name = teacher_name or getattr(getattr(model, "config", None), "_name_or_path", None) or None
    settings = dict(
        generation_config=_config_dict(generation_config),
        teacher=teacher_name,
        teacher_revision=teacher_revision,
        adapter=adapter.name,
        eos_token_ids=eos_token_ids,
        shard_size=shard_size,
        seed=seed,
        keep_full_canvas=full_canvas,
    )
    return SimpleNamespace(
        resolved=resolved,
        generation_config=generation_config,
        prompt_ids=prompt_ids,
        prompt_texts=prompt_texts,
        max_new_tokens=int(max_new_tokens),
        block_length=block_length,
        settings=settings,
        fingerprint=_fingerprint(prompt_ids, settings),
    )


def collection_fingerprint(
    model,
    processing_class,
    dataset,
    generation_config,
    *,
    adapter=None,
    prompt_column: str = "prompt",
    teacher_name: str | None = None,
    teacher_revision: str | None = None,
    reasoning_suffix: str | None = None,
    apply_chat_template: bool | None = None,
    shard_size: int = 256,
    seed: int | None = 0,
    keep_full_canvas: bool | None = None,
    **_ignored,
) -> tuple[str, dict]:
    """`(fingerprint, settings)` of the collection `collect_trajectories` would run with these arguments (the same
    keywords; those that do not change the trajectories, such as `batch_size` or `output_dir`, are ignored), without
    decoding anything. A trajectory dataset's metadata holds the fingerprint of the collection that wrote it."""
    plan = _plan_collection(
        model,
        processing_class,
        dataset,
        generation_config,
        adapter=adapter,
        source_column=_prompt_source_column(dataset.column_names, prompt_column),
        teacher_name=teacher_name,
        teacher_revision=teacher_revision,
        reasoning_suffix=reasoning_suffix,
        apply_chat_template=apply_chat_template,
        shard_size=shard_size,
        seed=seed,
        keep_full_canvas=keep_full_canvas,
    )
    return plan.fingerprint, plan.settings


# ------------------------------------------------------------------------------------------------ main entry
def collect_trajectories(
    model,
    processing_class,
    dataset,
    generation_config,
    *,
    batch_size: int = 8,
    adapter=None,
    prompt_column: str = "prompt",
    output_dir: str | None = None,
    shard_size: int = 256,
    resume: bool = True,
    accelerator=None,
    teacher_name: str | None = None,
    teacher_revision: str | None = None,
    reasoning_suffix: str | None = None,
    apply_chat_template: bool | None = None,
    keep_text: bool = True,
    keep_columns: list[str] | None = None,
    seed: int | None = 0,
    dataset_name: str | None = None,
    show_progress: bool = True,
    keep_full_canvas: bool | None = None,
    lockstep: bool = False,
):
    """Decode every prompt of `dataset` with the teacher and return the trajectory dataset.

    Args:
        model: the teacher: a `DiffusionLM` (`trl_t3d.load_diffusion_lm`; then `processing_class` and `adapter`
            stay None), or a loaded DLLM of a family `trl_t3d.adapters` knows.
        processing_class: its tokenizer (or a processor with a `.tokenizer`).
        dataset (`datasets.Dataset`): prompts in `prompt_column` (strings or message lists), or `messages`
            (conversations; the trailing assistant turn is dropped), or `prompt_ids`.
        generation_config (`DiffusionGenerationConfig` or dict): the teacher's decoding settings (slow: e.g. block 4,
            1 token per step). `max_new_tokens` and `block_length` are read from it. Its `cache` ("none" by default:
            exact decoding) may be "prefix" or "dual" for bidirectional teachers: Fast-dLLM's approximate KV cache,
            faster, with trajectories that can differ slightly from exact ones (it is recorded in the metadata).
        batch_size: prompts decoded together (left padded; prompts are sorted by length inside a shard).
        adapter: family adapter (instance or name); `None` detects it from the model config.
        prompt_column: column holding the prompts.
        output_dir: where finished shards are written (`shard-XXXXX-of-YYYYY.parquet` + a manifest). With it the
            collection is resumable and, under `accelerate launch`, shared through the file system (it must be
            visible to every process). Without it the processes exchange results with `gather_object`.
        shard_size: prompts per shard (the unit of resumption and of the split between processes).
        resume: skip shards already finished in `output_dir` (refused when the prompts or settings changed);
            `False` deletes them and starts over.
        accelerator: an `accelerate.Accelerator` (or `PartialState`); `None` uses the current `PartialState`.
        teacher_name, teacher_revision: recorded in the metadata (default: the model's `_name_or_path`).
        reasoning_suffix: appended to each prompt (last user message), e.g. `DEFAULT_REASONING_SUFFIX`.
        apply_chat_template: `None` applies it to conversational prompts only (as TRL); `True` also wraps plain
            strings as a user message; `False` never.
        keep_text: also store `prompt` (the rendered prompt text) and `completion` (decoded, special tokens skipped).
        keep_columns: other columns of `dataset` to carry over (e.g. `answer` for evaluation).
        seed: prompt i (its index in `dataset`) samples from its own generator, seeded with `seed + i`, so a resumed
            run decodes the same tokens as an uninterrupted one even at temperature > 0, and neither the batch size,
            the shard size nor the number of processes changes them. `None` uses torch's global generator.
        dataset_name: name of the prompt dataset, recorded in the metadata (and used by model cards).
        show_progress: tqdm progress bar on the local main process.
        keep_full_canvas: keep all `max_new_tokens` positions (trailing EOS padding included, every one decoded,
            with its step) instead of cutting after the first EOS. `None` keeps them for bidirectional families,
            whose predictions depend on the canvas length and whose decoder commits trailing EOS early (the states
            the student trains on are then exactly the teacher's canvases), and cuts for block-causal ones, where
            later blocks never influence earlier ones.
        lockstep: every process runs as many forwards as the busiest one (idle ones replay a forward). Required when
            the model is sharded (FSDP, DeepSpeed ZeRO-3), where every forward is a collective: processes hold
            different numbers of prompts and EOS ends their decoding at different times. `DDOTrainer` sets it.

    Returns:
        `datasets.Dataset` with `prompt_ids`, `completion_ids`, `step_map`, `block_length` (+ `prompt`, `completion`,
        `keep_columns`), in the order of `dataset`, and the metadata as JSON in `dataset.info.description`.
    """
    import datasets
    from tqdm.auto import tqdm

    from .version import __version__

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"`dataset` must be a `datasets.Dataset`, got {type(dataset).__name__}.")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"`batch_size` and `shard_size` must be >= 1, got {batch_size} and {shard_size}.")
    if len(dataset) == 0:
        raise ValueError("The prompt dataset is empty.")
    source_column = _prompt_source_column(dataset.column_names, prompt_column)
    missing = [c for c in keep_columns or [] if c not in dataset.column_names]
    if missing:
        raise ValueError(f"`keep_columns` {missing} are not in the dataset (columns: {sorted(dataset.column_names)}).")
    plan = _plan_collection(
        model,
        processing_class,
        dataset,
        generation_config,
        adapter=adapter,
        source_column=source_column,
        teacher_name=teacher_name,
        teacher_revision=teacher_revision,
        reasoning_suffix=reasoning_suffix,
        apply_chat_template=apply_chat_template,
        shard_size=shard_size,
        seed=seed,
        keep_full_canvas=keep_full_canvas,
    )
    resolved, generation_config, settings, fingerprint = (
        plan.resolved,
        plan.generation_config,
        plan.settings,
        plan.fingerprint,
    )
    model, tokenizer, adapter = resolved.model, resolved.tokenizer, resolved.adapter
    prompt_ids, prompt_texts, teacher_name = plan.prompt_ids, plan.prompt_texts, settings["teacher"]
    max_new_tokens, block_length, eos_token_ids = plan.max_new_tokens, plan.block_length, settings["eos_token_ids"]
    full_canvas = settings["keep_full_canvas"]
    state = _distributed_state(accelerator)

    num_shards = (len(prompt_ids) + shard_size - 1) // shard_size
    if output_dir is not None:
        _prepare_output_dir(output_dir, fingerprint, num_shards, resume, state)
    my_shards = list(range(state.process_index, num_shards, state.num_processes))
    todo = [k for k in my_shards if output_dir is None or not os.path.exists(_shard_path(output_dir, k, num_shards))]
    if output_dir is not None and len(todo) < len(my_shards):
        logger.info(
            "Resuming: %d of %d shards of this process are already done.", len(my_shards) - len(todo), len(my_shards)
        )

    # 3. Decode
    if (
        state.device.type != "cpu"
        and _model_device(model).type == "cpu"
        and not getattr(model, "is_loaded_in_4bit", False)
    ):
        model.to(state.device)
    was_training = getattr(model, "training", False)
    model.eval()
    total = sum(min(shard_size, len(prompt_ids) - k * shard_size) for k in todo)
    progress = tqdm(
        total=total,
        desc=f"Collecting trajectories (process {state.process_index})"
        if state.num_processes > 1
        else "Collecting trajectories",
        unit="prompt",
        disable=not show_progress or not state.is_local_main_process,
    )
    local_rows: dict[int, list[dict]] = {}
    from .generation.lockstep import lockstep_forwards, one_block_forward

    block = int(_get(generation_config, "block_length", None) or 1)
    paired = lockstep_forwards(
        model, enabled=lockstep, dummy_forward=lambda: one_block_forward(model, resolved.adapter, block)
    )
    try:
        paired.__enter__()
        for k in todo:
            shard = prompt_ids[k * shard_size : (k + 1) * shard_size]
            rows = _decode_shard(
                resolved,
                generation_config,
                shard,
                batch_size=batch_size,
                eos_token_ids=eos_token_ids,
                seeds=None if seed is None else [seed + k * shard_size + i for i in range(len(shard))],
                progress=progress,
                cut_at_eos=not full_canvas,
            )
            if output_dir is not None:
                _write_shard(rows, _shard_path(output_dir, k, num_shards))
            else:
                local_rows[k] = rows
    finally:
        paired.__exit__(None, None, None)  # leaves once every process has decoded its share
        progress.close()
        model.train(was_training)

    # 4. Gather every shard on every process, in dataset order
    if output_dir is not None:
        state.wait_for_everyone()
        shards = [_read_shard(_shard_path(output_dir, k, num_shards)) for k in range(num_shards)]
        state.wait_for_everyone()  # every process holds every shard before a caller's main process clears them
    else:
        if state.num_processes > 1:
            from accelerate.utils import gather_object

            gathered = gather_object([(k, rows) for k, rows in local_rows.items()])
            local_rows = dict(gathered)
        shards = [local_rows[k] for k in range(num_shards)]
    rows = [row for shard in shards for row in shard]
    if len(rows) != len(prompt_ids) or any(r["prompt_ids"] != p for r, p in zip(rows, prompt_ids)):
        raise RuntimeError("Collected trajectories are out of line with the prompts (a shard is corrupt?).")

    # 5. Dataset + metadata
    num_without_eos = sum(not r["has_eos"] for r in rows)
    if num_without_eos:
        logger.warning(
            "%d of %d completions reached max_new_tokens=%d without an EOS; they are kept whole (raise "
            "max_new_tokens to let the teacher finish).",
            num_without_eos,
            len(rows),
            max_new_tokens,
        )
    columns: dict[str, list[Any]] = {
        "prompt_ids": [r["prompt_ids"] for r in rows],
        "completion_ids": [r["completion_ids"] for r in rows],
        "step_map": [r["step_map"] for r in rows],
        "block_length": [block_length] * len(rows),
    }
    if keep_text:
        columns["prompt"] = [
            text if text is not None else tokenizer.decode(ids) for text, ids in zip(prompt_texts, prompt_ids)
        ]
        columns["completion"] = tokenizer.batch_decode(columns["completion_ids"], skip_special_tokens=True)
    for name in keep_columns or []:
        columns[name] = list(dataset[name])
    metadata = dict(
        format=TRAJECTORY_FORMAT,
        trl_t3d_version=__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        teacher=teacher_name,
        teacher_revision=teacher_revision,
        adapter=adapter.name,
        dataset_name=dataset_name,
        prompt_column=source_column,
        reasoning_suffix=reasoning_suffix,
        apply_chat_template=apply_chat_template,
        generation_config=settings["generation_config"],
        block_length=block_length,
        max_new_tokens=int(max_new_tokens),
        mask_token_id=adapter.mask_token_id,
        eos_token_ids=eos_token_ids,
        seed=seed,
        num_processes=state.num_processes,
        num_trajectories=len(rows),
        num_without_eos=num_without_eos,
        mean_completion_length=sum(len(c) for c in columns["completion_ids"]) / len(rows),
        fingerprint=fingerprint,
    )
    info = datasets.DatasetInfo(description=json.dumps(metadata))
    return datasets.Dataset.from_dict(columns, info=info)


# ------------------------------------------------------------------------------------------------ shard files
def _distributed_state(accelerator):
    """The processes' `PartialState`: of `accelerator` (an `Accelerator` or a `PartialState`), else the current one."""
    from accelerate import PartialState

    return accelerator.state if hasattr(accelerator, "state") else (accelerator or PartialState())


def _prepare_output_dir(output_dir: str, fingerprint: str, num_shards: int, resume: bool, state) -> None:
    """Check (or write) the manifest on the main process so that a resumed run belongs to the same collection."""
    manifest_path = os.path.join(output_dir, MANIFEST_NAME)
    if state.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        existing = None
        if os.path.exists(manifest_path):
            with open(manifest_path) as f:
                existing = json.load(f)
        if existing is not None and resume and existing.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{output_dir} holds shards of a different collection (other prompts, teacher or decoding "
                "settings). Use another `output_dir`, or `resume=False` to delete them and start over."
            )
        if existing is None or not resume:
            for name in os.listdir(output_dir):
                if name.startswith("shard-") and name.endswith(".parquet"):
                    os.remove(os.path.join(output_dir, name))
            with open(manifest_path, "w") as f:
                json.dump({"fingerprint": fingerprint, "num_shards": num_shards, "format": TRAJECTORY_FORMAT}, f)
    state.wait_for_everyone()


def _write_shard(rows: list[dict], path: str) -> None:
    """Write atomically: a shard file exists only once it is complete, so an interrupted run redoes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "prompt_ids": pa.array([r["prompt_ids"] for r in rows], type=pa.list_(pa.int64())),
            "completion_ids": pa.array([r["completion_ids"] for r in rows], type=pa.list_(pa.int64())),
            "step_map": pa.array([r["step_map"] for r in rows], type=pa.list_(pa.int64())),
            "has_eos": pa.array([r["has_eos"] for r in rows], type=pa.bool_()),
        }
    )
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_shard(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise RuntimeError(f"Shard {path} is missing after every process finished: is `output_dir` shared?")
    return pq.read_table(path).to_pylist()


def clear_shards(output_dir: str) -> None:
    """Delete a collection's shard files and manifest (after the merged dataset is saved)."""
    for name in os.listdir(output_dir):
        if (name.startswith("shard-") and ".parquet" in name) or name == MANIFEST_NAME:
            os.remove(os.path.join(output_dir, name))
    if not os.listdir(output_dir):
        shutil.rmtree(output_dir)


def collect_or_reuse(model, processing_class, dataset, generation_config, *, cache_dir: str, **collection):
    """`collect_trajectories` into `cache_dir` (resumable shards in `cache_dir/shards`, then the merged dataset saved
    there), or the dataset already saved in `cache_dir` when it is the same collection (same fingerprint: prompts,
    teacher, decoding settings, seed...); a cache of another collection is refused, naming what differs.

    The one self-collection path: `trl-t3d distill`, the examples and `DDOTrainer` given prompts all go through it.
    `collection` holds `collect_trajectories`' keyword arguments.
    """
    import datasets

    from .trajectories import dataset_metadata

    state = _distributed_state(collection.get("accelerator"))
    if os.path.exists(os.path.join(cache_dir, "dataset_info.json")):
        cached = datasets.load_from_disk(cache_dir)
        fingerprint, settings = collection_fingerprint(
            model, processing_class, dataset, generation_config, **collection
        )
        if dataset_metadata(cached).get("fingerprint") == fingerprint:
            logger.info("Reusing the %d trajectories in %s.", len(cached), cache_dir)
            return cached
        differences = _collection_differences(cached, dataset, settings, collection)
        raise ValueError(
            f"{cache_dir} holds trajectories of another collection: {differences}. "
            "Reusing them would train on the teacher decoding of other settings. Delete the folder to recollect "
            f"(`rm -r {cache_dir}`), or collect into another folder (`--trajectory_dir`, or another `output_dir`)."
        )
    shard_dir = os.path.join(cache_dir, "shards")
    trajectories = collect_trajectories(
        model, processing_class, dataset, generation_config, output_dir=shard_dir, **collection
    )
    if state.is_main_process:
        # save_to_disk next to the shards, then drop them: the saved dataset is the cache from now on.
        trajectories.save_to_disk(os.path.join(cache_dir, "_tmp_dataset"))
        clear_shards(shard_dir)
        for name in os.listdir(os.path.join(cache_dir, "_tmp_dataset")):
            os.replace(os.path.join(cache_dir, "_tmp_dataset", name), os.path.join(cache_dir, name))
        os.rmdir(os.path.join(cache_dir, "_tmp_dataset"))
    state.wait_for_everyone()
    return trajectories


def _collection_differences(cached, dataset, settings: dict, collection: dict) -> str:
    """What differs between a cached trajectory dataset and the collection this run asks for, in words."""
    from .trajectories import dataset_metadata

    meta = dataset_metadata(cached)
    if not meta.get("fingerprint"):
        return "it has no collection fingerprint in its metadata (not written by `collect_trajectories`)"
    found = []
    if len(cached) != len(dataset):
        found.append(f"{len(cached)} rows, this run has {len(dataset)} prompts")
    old_gen, new_gen = meta.get("generation_config") or {}, settings["generation_config"]
    for key in sorted(set(old_gen) | set(new_gen)):
        if key != "transformers_version" and old_gen.get(key) != new_gen.get(key):
            found.append(f"decoding `{key}` {old_gen.get(key)!r}, this run {new_gen.get(key)!r}")
    for key in ("teacher", "teacher_revision", "adapter", "eos_token_ids", "seed"):
        if key in meta and meta[key] != settings[key]:
            found.append(f"`{key}` {meta[key]!r}, this run {settings[key]!r}")
    for key in ("reasoning_suffix", "apply_chat_template"):
        if key in meta and meta[key] != collection.get(key):
            found.append(f"`{key}` {meta[key]!r}, this run {collection.get(key)!r}")
    return "; ".join(found) or "the prompts or the shard size differ"
