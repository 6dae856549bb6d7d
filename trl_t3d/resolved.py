"""One resolved diffusion LM: model, tokenizer, family adapter, special ids and prompt rendering, made once.

Collection, training and evaluation all take a `DiffusionLM` (or build one from a model and its tokenizer with
`DiffusionLM.from_model`), so none of them re-derives a special id or renders a prompt its own way: a prompt rendered
two ways is two different prompts. `load_diffusion_lm` is the one loader from a Hub id or a local directory.

Prompt rendering follows TRL: a conversation (a list of `{"role", "content"}` messages) goes through the chat
template with the generation prompt; a plain string is tokenized as it is (with the tokenizer's special tokens),
unless `apply_chat_template=True` makes it one user message; `prompt_ids` are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .adapters import BaseDiffusionAdapter, get_adapter

PROMPT_IDS_COLUMN = "prompt_ids"
MESSAGES_COLUMN = "messages"


def _is_conversation(value) -> bool:
    return isinstance(value, list) and (not value or isinstance(value[0], dict))


def _add_suffix_to_messages(messages: list[dict], suffix: str) -> list[dict]:
    """Append `suffix` to the content of the last user message (a copy; the input is not modified)."""
    messages = [dict(m) for m in messages]
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"] = f"{message.get('content', '')}{suffix}"
            return messages
    raise ValueError("`reasoning_suffix` needs a user message to append to, but the conversation has none.")


def render_prompt(
    value,
    tokenizer,
    *,
    source_column: str = "prompt",
    reasoning_suffix: str | None = None,
    apply_chat_template: bool | None = None,
) -> tuple[list[int], str | None]:
    """Token ids (and text) of one prompt: the only prompt renderer of trl-t3d.

    Args:
        value: a string, a list of messages, or token ids (with `source_column="prompt_ids"`).
        tokenizer: the model's tokenizer.
        source_column: where the value comes from; a `messages` column holds whole conversations, so its trailing
            assistant turns (the reference answer) are removed; `prompt_ids` are used as they are.
        reasoning_suffix: appended to the prompt (to the last user message of a conversation).
        apply_chat_template: `None` (TRL's rule): the chat template for conversations only; `True`: plain strings
            too, as one user message; `False`: never (a conversation is then an error).

    Returns:
        `(ids, text)`; `text` is the rendered prompt, None for `prompt_ids`.
    """
    if source_column == PROMPT_IDS_COLUMN:
        if reasoning_suffix:
            raise ValueError("`reasoning_suffix` cannot be added to a `prompt_ids` column; give text prompts.")
        return [int(t) for t in value], None
    if isinstance(value, str) and apply_chat_template:
        value = [{"role": "user", "content": value}]
    if _is_conversation(value):
        if apply_chat_template is False:
            raise ValueError(
                "`apply_chat_template=False`, but the prompt is a conversation, which only the chat template can "
                "render. Leave `apply_chat_template` unset, or give plain-string prompts."
            )
        messages = list(value)
        if source_column == MESSAGES_COLUMN:
            while messages and messages[-1].get("role") == "assistant":
                messages.pop()
        if not messages:
            raise ValueError("A conversational prompt is empty (no message before the assistant's answer).")
        if reasoning_suffix:
            messages = _add_suffix_to_messages(messages, reasoning_suffix)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "Conversational prompts need a chat template, but the tokenizer has none. Set "
                "`tokenizer.chat_template`, or give plain-string prompts."
            )
        continue_final = messages[-1].get("role") == "assistant"
        text = tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        # The template already carries BOS and friends: do not add special tokens twice.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), text
    if isinstance(value, str):
        text = value + (reasoning_suffix or "")
        return list(tokenizer(text)["input_ids"]), text
    raise ValueError(
        f"Unsupported prompt of type {type(value).__name__} in column '{source_column}': expected a string or a list "
        "of {'role': ..., 'content': ...} messages."
    )


@dataclass(frozen=True)
class DiffusionLM:
    """A diffusion LM with everything resolved once: pass it to `collect_trajectories`, `DDOTrainer` and
    `evaluate_few_step` in place of the model (the tokenizer and adapter come with it).

    Args:
        model: the loaded model (a transformers model, or a `PeftModel`).
        processing_class: its tokenizer (or a processor with a `.tokenizer`).
        adapter (`BaseDiffusionAdapter`): the family adapter; it holds the special ids.
    """

    model: Any
    processing_class: Any
    adapter: BaseDiffusionAdapter

    @classmethod
    def from_model(
        cls, model, processing_class=None, *, adapter=None, mask_token_id: int | None = None
    ) -> DiffusionLM:
        """Resolve an already loaded model (and its tokenizer); a `DiffusionLM` passes through.

        The adapter is `adapter` when given, else the one the model resolved when it was loaded with
        `AutoModelForDiffusionLM` (same tokenizer, no `mask_token_id` override), else detected from the config.
        """
        if isinstance(model, DiffusionLM):
            if processing_class is not None and processing_class is not model.processing_class:
                raise ValueError(
                    "A `DiffusionLM` carries its own tokenizer: omit `processing_class` (or pass the model itself)."
                )
            same_family = adapter in (None, model.adapter, model.adapter.name, type(model.adapter))
            if not same_family or (mask_token_id is not None and int(mask_token_id) != model.mask_token_id):
                raise ValueError(
                    "A `DiffusionLM` carries its own adapter and special ids: omit `adapter` / `mask_token_id`, or "
                    "resolve the model again with `DiffusionLM.from_model(model.model, ..., adapter=...)`."
                )
            return model
        if processing_class is None:
            processing_class = model.__dict__.get("diffusion_processing_class")
        if processing_class is None:
            raise ValueError(
                "No tokenizer: pass `processing_class=` (e.g. `AutoTokenizer.from_pretrained(...)`), or load the "
                "model with `trl_t3d.load_diffusion_lm`."
            )
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if adapter is None and hasattr(model, "get_diffusion_adapter"):  # loaded by `AutoModelForDiffusionLM`
            if mask_token_id is None and model.__dict__.get("diffusion_processing_class") is tokenizer:
                adapter = model.get_diffusion_adapter()  # resolved at load time with this very tokenizer
            else:
                named = model.__dict__.get("diffusion_adapter")  # the family named at load time
                adapter = type(named) if isinstance(named, BaseDiffusionAdapter) else named
                if mask_token_id is None:
                    mask_token_id = getattr(model.diffusion_generation_config, "mask_token_id", None)
        _check_vocabulary_fits(model, tokenizer)
        adapter = get_adapter(model, adapter, tokenizer=tokenizer, mask_token_id=mask_token_id)
        return cls(model, processing_class, adapter)

    # ---------------------------------------------------------------- special ids (all from the adapter)
    @property
    def tokenizer(self):
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    @property
    def mask_token_id(self) -> int | None:
        return self.adapter.mask_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.adapter.pad_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends a completion: EOS and the family's end-of-turn tokens."""
        return list(self.adapter.eos_token_ids)

    @property
    def end_of_turn_token_ids(self) -> list[int]:
        return list(self.adapter.end_of_turn_token_ids)

    # ---------------------------------------------------------------- prompts
    def render_prompt(
        self,
        prompt,
        *,
        apply_chat_template: bool | None = None,
        reasoning_suffix: str | None = None,
        source_column: str = "prompt",
    ) -> list[int]:
        """Token ids of one prompt (a string, a list of messages, or ids with `source_column="prompt_ids"`)."""
        return self.render_prompt_and_text(
            prompt,
            apply_chat_template=apply_chat_template,
            reasoning_suffix=reasoning_suffix,
            source_column=source_column,
        )[0]

    def render_prompt_and_text(self, prompt, **kwargs) -> tuple[list[int], str | None]:
        """`(ids, rendered text)` of one prompt; see `trl_t3d.resolved.render_prompt` for the rule."""
        ids, text = render_prompt(prompt, self.tokenizer, **kwargs)
        if self.mask_token_id is not None and self.adapter.noise == "mask" and self.mask_token_id in ids:
            raise ValueError(
                f"A prompt renders to the mask token (id {self.mask_token_id}); the model would treat it as a "
                "position to fill. Remove it from the prompt (or escape it in the text)."
            )
        return ids, text


def _check_vocabulary_fits(model, tokenizer) -> None:
    """A tokenizer with ids the model's embedding has no row for fails deep inside decoding (`IndexError: index out of
    range in self`); say it here, with both sizes."""
    try:
        weight = model.get_input_embeddings().weight
        # a ZeRO-3 partitioned weight is empty on each rank; its full shape is `ds_shape`
        rows = weight.ds_shape[0] if hasattr(weight, "ds_shape") else weight.shape[0]
        size = len(tokenizer)
    except (AttributeError, TypeError, NotImplementedError):
        return  # no embedding to compare with (a family with its own input layer); decoding checks ids itself
    if size > rows:
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        raise ValueError(
            f"The tokenizer has {size} tokens, but the model ({name}) has an embedding of only {rows} rows: token ids "
            f">= {rows} would crash decoding. Load the model's own tokenizer (from the same folder or Hub id), or "
            f"grow the embedding to the tokenizer with `model.resize_token_embeddings({size})` (new rows are untrained)."
        )


def _check_local_path(name_or_path) -> None:
    """A path (`./x`, `../x`, `/x`, `~/x`, `x/y/z`, `x/`) that does not exist is said so, instead of the Hub's
    "Repo id must use alphanumeric chars" about a name that was never meant as a Hub id."""
    import os

    name = str(name_or_path)
    looks_like_path = (
        name.startswith(("./", "../", "/", "~", ".\\")) or name.endswith(("/", os.sep)) or name.count("/") > 1
    )
    if looks_like_path and not os.path.isdir(os.path.expanduser(name)):
        where = os.path.abspath(os.path.expanduser(name))
        parent = os.path.dirname(where.rstrip(os.sep))
        hint = "" if os.path.isdir(parent) else f" (nor does its parent folder {parent})"
        raise FileNotFoundError(
            f"No model folder at {name!r}: {where} does not exist{hint}. Check the path (relative paths start from "
            f"{os.getcwd()}), or give a Hub id such as `GSAI-ML/LLaDA-8B-Instruct`."
        )


def _torch_dtype(dtype):
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}: use 'auto', 'bfloat16', 'float16' or 'float32'.")
    return value


def load_tokenizer(
    pretrained_model_name_or_path: str, *, trust_remote_code: bool = False, revision: str | None = None
):
    """The model's tokenizer, left padded (decoding appends the completion right after the prompt), pad = EOS when it
    has no pad token."""
    import transformers

    _check_local_path(pretrained_model_name_or_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        pretrained_model_name_or_path, trust_remote_code=trust_remote_code, revision=revision
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_diffusion_lm(
    pretrained_model_name_or_path: str,
    *,
    adapter=None,
    mask_token_id: int | None = None,
    processing_class=None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    dtype="auto",
    quantization_config=None,
    **model_kwargs,
) -> DiffusionLM:
    """The one loader: tokenizer (left padded, pad = EOS when it has none) and model through
    `AutoModelForDiffusionLM.from_pretrained`, resolved into a `DiffusionLM`.

    Args:
        pretrained_model_name_or_path: Hub id or local directory.
        adapter: the family (name, class or instance); detected from the config when omitted.
        mask_token_id: mask id when neither tokenizer nor config has one.
        processing_class: a tokenizer to use instead of the checkpoint's.
        trust_remote_code, revision: as in transformers (for the tokenizer, config and model).
        dtype: `"auto"`, a `torch.dtype` or its name (`"bfloat16"`).
        quantization_config: a `BitsAndBytesConfig` or its dict (QLoRA); on GPU the model is placed on this
            process's device unless `device_map` is given.
        model_kwargs: everything else goes to `from_pretrained` (`attn_implementation`, `device_map`, ...).
    """
    import transformers

    from .generation import AutoModelForDiffusionLM

    _check_local_path(pretrained_model_name_or_path)
    if processing_class is None:
        processing_class = load_tokenizer(
            pretrained_model_name_or_path, trust_remote_code=trust_remote_code, revision=revision
        )
    kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
    kwargs.update(trust_remote_code=trust_remote_code, dtype=_torch_dtype(dtype))
    if revision is not None:
        kwargs["revision"] = revision
    if isinstance(quantization_config, dict):
        quantization_config = transformers.BitsAndBytesConfig(**quantization_config)
    if quantization_config is not None:
        import torch
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization_config
        if torch.cuda.is_available() and "device_map" not in kwargs:
            kwargs["device_map"] = {"": PartialState().local_process_index}
    model = AutoModelForDiffusionLM.from_pretrained(
        pretrained_model_name_or_path,
        adapter=adapter,
        mask_token_id=mask_token_id,
        processing_class=getattr(processing_class, "tokenizer", processing_class),
        **kwargs,
    )
    return DiffusionLM.from_model(model, processing_class)
