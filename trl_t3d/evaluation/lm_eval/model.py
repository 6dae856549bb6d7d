"""lm-evaluation-harness backend for diffusion LMs: `--model diffusion_lm` (GSM8K, MATH, HumanEval, MBPP, ...).

Importing this module registers the model class `DiffusionLMEval` as `diffusion_lm` with lm-eval. lm-eval (0.4.13)
discovers no plugin models, so its own command line does not see it; `python -m trl_t3d.lm_eval` is lm-eval's command
line with the model registered (same arguments), and works under `accelerate launch -m trl_t3d.lm_eval` (data
parallel):

```bash
python -m trl_t3d.lm_eval --model diffusion_lm --tasks gsm8k --batch_size 8 \
    --model_args pretrained=STUDENT,tokens_per_step=4,block_length=32,max_new_tokens=256
```

- `generate_until`: the one decode loop (`trl_t3d.generation.decode_prompts`) with every decoding option as a model
  argument, prompts batched with left padding (grouped by settings, sorted by length), each request seeded by itself,
  lm-eval's chat template when asked (`--apply_chat_template`), the task's stop sequences cut from the text (decoding
  itself stops at EOS).
- `loglikelihood` / `loglikelihood_rolling`: the Monte-Carlo masked bound of LLaDA's evaluation, block-wise for
  block-causal families (`trl_t3d.evaluation.likelihood`); `is_greedy` is checked by decoding the continuation one
  token per step.
- Per-sample NFE and tokens per forward are aggregated per task (over every process) and written into lm-eval's
  results under `config.diffusion_lm.tasks`; `trl-t3d eval --lm_eval_tasks ...` (`lm_eval.sweep`) puts them next to
  accuracy.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import zlib
from collections import defaultdict

import torch

try:
    import lm_eval.models  # noqa: F401  (lm-eval imports its own models only while its registry is empty)
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The lm-evaluation-harness backend needs lm-eval: `pip install 'trl-t3d[eval]'` (or `pip install lm-eval`)."
    ) from error

from ...generation import DiffusionGenerationConfig, decode_prompts, diffusion_generate
from ...generation.config import DECODING_FIELDS, decoding_settings
from ...generation.decode import resolve_generation_config
from ...generation.speed import tokens_per_forward
from ..likelihood import masked_loglikelihood

logger = logging.getLogger(__name__)

MODEL_NAME = "diffusion_lm"
# Decoding model arguments: the decoding fields (`generation.config.DECODING_FIELDS`) but the canvas, which the
# backend sets itself (`max_new_tokens`, else the task's `max_gen_toks`).
DECODING_ARGS = frozenset(DECODING_FIELDS) - {"max_new_tokens"}
# `do_sample=True` without a temperature samples at this one (Hugging Face `GenerationConfig`'s default), unless the
# model's own `diffusion_generation_config.json` has a temperature > 0.
DEFAULT_SAMPLING_TEMPERATURE = 1.0
_GEN_KWARGS_USED = {
    "until",
    "max_gen_toks",
    "max_new_tokens",
    "max_tokens",
    "max_completion_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
}


def _round_up(value: int, multiple: int | None) -> int:
    return value if not multiple else -(-value // multiple) * multiple


@register_model(MODEL_NAME)
class DiffusionLMEval(TemplateLM):
    """lm-eval model class for any diffusion LM `trl_t3d` supports.

    Every argument can be given as `--model_args key=value,...`.

    Args:
        pretrained (`str`): Hub id or local directory, loaded with `trl_t3d.load_diffusion_lm`; or pass a loaded
            `model` (a `DiffusionLM`, or a model and its `tokenizer`) from Python instead.
        tokenizer (`str` or tokenizer, *optional*): defaults to `pretrained`'s.
        adapter (`str`, *optional*): family ("llada", "dream", "sdar", "generic", ...); detected when omitted.
        mask_token_id (`int`, *optional*): when neither the tokenizer nor the config names one.
        trust_remote_code (`bool`), revision (`str`), dtype (`str`, defaults to "auto"): loading options.
        device (`str`, *optional*): defaults to the accelerate process's device (CUDA when available).
        batch_size (`int`, defaults to 1): prompts decoded together (lm-eval's `--batch_size`).
        max_new_tokens (`int`, *optional*): completion canvas; defaults to the task's `max_gen_toks` (256 when the
            task sets none) rounded up to a multiple of `block_length`.
        temperature, top_k, top_p (*optional*): sampling; when unset, the task's generation kwargs decide
            (`do_sample=False` is greedy; `do_sample=True` without a temperature samples at the model's own temperature,
            else at 1.0, Hugging Face's default, and says so).
        **decoding: every other field of `DiffusionGenerationConfig` (`tokens_per_step` or `steps`, `block_length`,
            `remasking`, `threshold`, `factor`, `schedule`, `cache`, `stop_at_eos`, ...). Unset ones come from the
            model's `diffusion_generation_config.json`, then the defaults.
        use_cache (`bool`, defaults to True): exact block KV cache of block-causal families (same tokens).
        mc_num (`int`, defaults to 128): Monte-Carlo samples per log-likelihood (LLaDA uses 128).
        mc_batch_size (`int`, defaults to 32): samples per forward pass.
        check_greedy (`bool`, defaults to True): compute `is_greedy` of each continuation by decoding it one token
            per step (len(continuation) forward passes); False skips it and reports False.
        max_length (`int`, *optional*): longest context + completion; defaults to the config's position limit.
        seed (`int`, defaults to 0): seeds sampling and the Monte-Carlo draws, per request: the same samples and
            estimates with any number of processes, any batch size and any order (each request draws from its own
            generator, in any batch).

    Prompts follow trl-t3d's one rule (`trl_t3d.resolved.render_prompt`): a context lm-eval rendered with the chat
    template is tokenized without adding special tokens (the template carries them), any other text with them.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model=None,
        tokenizer=None,
        adapter: str | None = None,
        mask_token_id: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int | None = None,
        use_cache: bool = True,
        mc_num: int = 128,
        mc_batch_size: int = 32,
        check_greedy: bool = True,
        max_length: int | None = None,
        seed: int = 0,
        **decoding,
    ):
        super().__init__()
        unknown = sorted(set(decoding) - DECODING_ARGS)
        if unknown:
            raise ValueError(
                f"Unknown `{MODEL_NAME}` model arguments {unknown}. Valid ones: pretrained, tokenizer, adapter, "
                "mask_token_id, trust_remote_code, revision, dtype, device, batch_size, max_new_tokens, use_cache, "
                "mc_num, mc_batch_size, check_greedy, max_length, seed, and the decoding settings "
                f"{sorted(DECODING_ARGS - {'mask_token_id'})}."
            )
        if (pretrained is None) == (model is None):
            raise ValueError("Give exactly one of `pretrained` (a Hub id or directory) and `model` (a loaded model).")
        if str(batch_size).startswith("auto"):
            raise ValueError("`batch_size=auto` is not supported by `diffusion_lm`; give an int (e.g. 8).")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if int(mc_num) < 1 or int(mc_batch_size) < 1:
            raise ValueError(f"`mc_num` and `mc_batch_size` must be >= 1, got {mc_num}, {mc_batch_size}.")

        # 1. Processes: rank and world size from accelerate (`accelerate launch -m trl_t3d.lm_eval ...`).
        from accelerate import PartialState

        accelerator = getattr(torch, "accelerator", None)
        has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
        self._state = PartialState(cpu=not has_accelerator)  # CPU-only processes talk over gloo
        self._rank, self._world_size = self._state.process_index, self._state.num_processes

        # 2. One resolved model: tokenizer, adapter and special ids travel together (`trl_t3d.resolved`).
        from ...resolved import DiffusionLM, load_diffusion_lm

        if model is None:
            if isinstance(tokenizer, str):
                from ...resolved import load_tokenizer

                tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code, revision=revision)
            resolved = load_diffusion_lm(
                pretrained,
                adapter=adapter,
                mask_token_id=mask_token_id,
                processing_class=tokenizer,
                trust_remote_code=trust_remote_code,
                revision=revision,
                dtype=dtype,
            )
        else:
            if isinstance(tokenizer, str):
                raise ValueError("With a loaded `model`, pass the tokenizer object, not a name.")
            if tokenizer is None and not isinstance(model, DiffusionLM):
                tokenizer = model.__dict__.get("diffusion_processing_class")
            resolved = DiffusionLM.from_model(model, tokenizer, adapter=adapter, mask_token_id=mask_token_id)
        self.resolved = resolved
        if self._world_size > 1:
            self._device = self._state.device  # one device per process
        elif device is not None:
            self._device = torch.device(device)
            if self._device.type == "cuda" and not torch.cuda.is_available():  # lm-eval's CLI defaults to cuda:0
                logger.warning("Device %s requested but CUDA is not available: running on the CPU.", device)
                self._device = torch.device("cpu")
        elif pretrained is not None:
            self._device = self._state.device
        else:
            self._device = next(resolved.model.parameters()).device
        self.model = resolved.model.to(self._device).eval()
        self.tokenizer = resolved.tokenizer
        self.adapter = resolved.adapter
        self.model_name = pretrained or getattr(getattr(self.model, "config", None), "_name_or_path", None) or "model"

        # 3. Decoding settings: the model's own, then the explicit arguments.
        explicit = {k: v for k, v in decoding.items() if v is not None}
        if mask_token_id is not None:
            explicit["mask_token_id"] = int(mask_token_id)
        if "tokens_per_step" in explicit and "steps" not in explicit:
            explicit["steps"] = None
        if "steps" in explicit and "tokens_per_step" not in explicit:
            explicit["tokens_per_step"] = None
        self._explicit = set(explicit)
        self._max_new_tokens = max_new_tokens
        base = getattr(self.model, "diffusion_generation_config", None) or DiffusionGenerationConfig()
        base = copy.deepcopy(base)
        for key, value in explicit.items():
            setattr(base, key, value)
        if base.block_length is None and self.adapter.block_causal:
            base.block_length = self._trained_block_length()  # block-causal models decode in the blocks they learned
        base.return_dict_in_generate = True
        base.output_step_map = True
        base.max_new_tokens = max_new_tokens or _round_up(self.max_gen_toks, base.block_length)
        self.generation_config = resolve_generation_config(self.model, base, {})  # validates: errors name the fix
        self.use_cache = bool(use_cache)

        # 4. Log-likelihood settings.
        self.mc_num, self.mc_batch_size = int(mc_num), int(mc_batch_size)
        self.check_greedy = bool(check_greedy)
        self._max_length = max_length
        self.seed = int(seed)
        self._chat_rendered: set[str] = set()  # contexts lm-eval rendered with our chat template
        self._records: list[dict] = []  # per-request speed records (rank 0 holds every process's after a call)
        self._warned: set[str] = set()

    # ------------------------------------------------------------------------------------------ lm-eval plumbing
    @property
    def device(self):
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def all_gather(self, tensor):
        if self._world_size <= 1:
            return tensor
        from accelerate.utils import gather

        return gather(tensor)

    def gather_object(self, obj, dst=0):
        if self._world_size <= 1:
            return [obj]
        result = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self._world_size > 1:
            self._state.wait_for_everyone()

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or "tokenizer").replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "`--apply_chat_template` was given but the tokenizer has no chat template. Drop the flag, or set "
                "`tokenizer.chat_template` and save the tokenizer next to the model."
            )
        text = self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )
        self._chat_rendered.add(text)
        return text

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos if bos is not None else self.eot_token_id

    @property
    def max_gen_toks(self) -> int:
        return 256

    @property
    def max_length(self) -> int:
        if self._max_length:
            return int(self._max_length)
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "get_text_config"):
            config = config.get_text_config()
        for key in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        model_max = getattr(self.tokenizer, "model_max_length", None)
        return model_max if isinstance(model_max, int) and model_max < 1_000_000 else 4096

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids by trl-t3d's rule: special tokens for plain text, none for chat-template output."""
        if add_special_tokens is None:
            add_special_tokens = string not in self._chat_rendered
        return list(self.tokenizer(string, add_special_tokens=add_special_tokens)["input_ids"])

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split (trailing spaces move to the continuation), special tokens by the context's rule."""
        special = context not in self._chat_rendered
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation, add_special_tokens=special)
        context_ids = self.tok_encode(context, add_special_tokens=special)
        return context_ids, whole[len(context_ids) :]

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    # ------------------------------------------------------------------------------------------ generation
    def _request_config(self, gen_kwargs: dict) -> tuple[DiffusionGenerationConfig, list[str]]:
        """Decoding settings of one request: explicit model args win, the task's generation kwargs fill the rest."""
        if not isinstance(gen_kwargs, dict):
            raise ValueError(
                f"Expected the request's generation kwargs to be a dict, got {type(gen_kwargs).__name__}."
            )
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        ignored = sorted(set(gen_kwargs) - _GEN_KWARGS_USED)
        if ignored:
            self._warn_once("ignored", "diffusion_lm ignores the generation kwargs %s of the task.", ignored)
        config = copy.deepcopy(self.generation_config)
        if self._max_new_tokens is None:
            requested = next(
                (
                    gen_kwargs[k]
                    for k in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
                    if gen_kwargs.get(k) is not None
                ),
                self.max_gen_toks,
            )
            config.max_new_tokens = _round_up(int(requested), config.block_length)
            if config.max_new_tokens != int(requested):
                self._warn_once(
                    "rounded",
                    "The task asks for %d new tokens; diffusion_lm decodes a canvas of %d (a multiple of "
                    "block_length=%d). Set max_new_tokens to choose it.",
                    int(requested),
                    config.max_new_tokens,
                    config.block_length,
                )
        if "temperature" not in self._explicit:
            config.temperature = self._task_temperature(gen_kwargs)
        for key in ("top_k", "top_p"):
            if key not in self._explicit and gen_kwargs.get(key) is not None:
                if float(config.temperature or 0.0) > 0.0:
                    setattr(config, key, gen_kwargs[key])
                else:  # as Hugging Face's greedy search; here they would change the commit order's confidences
                    self._warn_once(
                        f"greedy_{key}",
                        "The task's %s=%s is ignored: it decodes greedily (temperature 0), as in Hugging Face's "
                        "`generate`. Pass the model arguments temperature=... and %s=... to sample with it.",
                        key,
                        gen_kwargs[key],
                        key,
                    )
        config.validate()
        return config, until

    def _task_temperature(self, gen_kwargs: dict) -> float:
        """The temperature a task's generation kwargs ask for, read as Hugging Face's `generate` reads them.

        `do_sample=False` is greedy (any temperature ignored); no `do_sample` and no temperature is greedy; a temperature
        without `do_sample` is used as given. `do_sample=True` without a temperature samples at the model's own
        temperature (its `diffusion_generation_config.json`) when that is > 0, else at 1.0, Hugging Face's default; it
        is never silently greedy.
        """
        do_sample, temperature = gen_kwargs.get("do_sample"), gen_kwargs.get("temperature")
        if do_sample is False:
            return 0.0
        if temperature is not None:
            if do_sample and float(temperature) == 0.0:
                self._warn_once(
                    "sample_at_zero",
                    "The task asks for do_sample=True at temperature=0, which is greedy decoding; diffusion_lm decodes "
                    "greedily. Pass the model argument temperature=... to sample.",
                )
            return float(temperature)
        if not do_sample:
            return 0.0
        own = float(getattr(getattr(self.model, "diffusion_generation_config", None), "temperature", 0.0) or 0.0)
        default = own if own > 0 else DEFAULT_SAMPLING_TEMPERATURE
        self._warn_once(
            "sample_default",
            "The task asks for do_sample=True without a temperature: diffusion_lm samples at temperature=%s (%s). Pass "
            "the model argument temperature=... to choose it.",
            default,
            "the model's diffusion_generation_config" if own > 0 else "Hugging Face's default",
        )
        return default

    def _prompt_ids(self, context: str, canvas: int) -> list[int]:
        ids = self.tok_encode(context)
        room = self.max_length - canvas
        if room < 1:
            raise ValueError(
                f"The completion canvas ({canvas} tokens) does not fit in max_length={self.max_length}. Lower "
                "max_new_tokens or raise max_length."
            )
        if len(ids) > room:
            self._warn_once(
                "truncated", "Prompts longer than %d tokens are cut from the left to fit max_length.", room
            )
            ids = ids[-room:]
        return ids

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode every request with the one decode loop (`generation.decode_prompts`), in batches of `batch_size`
        per decoding settings. Each request draws its random numbers (temperature > 0, `remasking="random"` or
        `"origin"`, a family whose noise is uniform random tokens) from its own generator, seeded by the request itself
        (its context, generation kwargs and which of lm-eval's `repeats` copies it is), so that its text does not
        depend on the process, the batch it lands in or the order of the requests.
        """
        from tqdm.auto import tqdm

        settings = [self._request_config(req.args[1]) for req in requests]
        prompts = [
            self._prompt_ids(req.args[0], config.max_new_tokens) for req, (config, _) in zip(requests, settings)
        ]
        copies: dict[int, int] = defaultdict(int)
        seeds = []
        for req in requests:  # lm-eval passes `repeats` copies of one request object: each copy is its own sample
            key = (req.args[0], json.dumps(req.args[1], sort_keys=True, default=str), str(copies[id(req)]))
            seeds.append(self._request_seed(*key))
            copies[id(req)] += 1
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (config, _) in enumerate(settings):
            groups[config.to_json_string(use_diff=False)].append(i)

        outputs: list[str | None] = [None] * len(requests)
        stats: list[dict | None] = [None] * len(requests)
        with tqdm(
            total=len(requests), desc="diffusion_lm generate_until", disable=disable_tqdm or self._rank != 0
        ) as progress:
            for indices in groups.values():
                config = settings[indices[0]][0]
                decoded = decode_prompts(
                    self.model,
                    [prompts[i] for i in indices],
                    config,
                    adapter=self.adapter,
                    processing_class=self.tokenizer,
                    batch_size=self.batch_size,
                    seeds=[seeds[i] for i in indices],
                    use_cache=self.use_cache,
                    return_text=True,
                    progress=progress,
                    device=self._device,
                )
                for i, out in zip(indices, decoded):
                    text = out.text
                    for stop in settings[i][1]:
                        if stop:
                            text = text.split(stop)[0]
                    outputs[i] = text
                    stats[i] = {
                        "nfe": out.nfe,
                        "committed": out.committed,
                        "batch_nfe": out.batch_nfe,
                        "seconds": out.seconds,
                        "tokens_per_step": config.tokens_per_step,
                        "steps": config.steps,
                    }
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        self._collect("generate_until", requests, stats)
        return outputs

    # ------------------------------------------------------------------------------------------ likelihood
    def _trained_block_length(self) -> int:
        """A block-causal family's block size: the adapter's answer, else `config.block_size` (SDAR), else its default."""
        hook = getattr(self.adapter, "trained_block_length", None)
        trained = hook(self.model) if hook is not None else None
        trained = trained or getattr(getattr(self.model, "config", None), "block_size", None)
        return int(trained or getattr(self.adapter, "default_block_length", 4))

    def _likelihood_block_length(self) -> int | None:
        """Blocks of the masked bound: the decoding blocks for block-causal families, one block otherwise."""
        return int(self.generation_config.block_length) if self.adapter.block_causal else None

    def _request_seed(self, *parts: str) -> int:
        """A seed of the request itself: the same draws on any process, in any order."""
        return self.seed * 1_000_003 + zlib.crc32("\x00".join(parts).encode("utf-8"))

    def _request_generator(self, *parts: str, device=None) -> torch.Generator:
        """A generator seeded by the request itself (`_request_seed`)."""
        return torch.Generator(device=device or "cpu").manual_seed(self._request_seed(*parts))

    def _fit(self, context_ids: list[int], continuation_ids: list[int]) -> list[int]:
        room = self.max_length - len(continuation_ids)
        if room < 1:
            raise ValueError(
                f"A continuation of {len(continuation_ids)} tokens does not fit in max_length={self.max_length}."
            )
        if len(context_ids) > room:
            self._warn_once("truncated_ll", "Contexts longer than %d tokens are cut from the left.", room)
            context_ids = context_ids[-room:]
        return context_ids

    def _score(self, context_ids: list[int], continuation_ids: list[int], generator) -> float:
        return masked_loglikelihood(
            self.model,
            self.adapter,
            self._fit(context_ids, continuation_ids),
            continuation_ids,
            num_samples=self.mc_num,
            batch_size=self.mc_batch_size,
            block_length=self._likelihood_block_length(),
            generator=generator,
        )

    def _is_greedy(self, context_ids: list[int], continuation_ids: list[int]) -> bool:
        """Whether decoding one token per step, deterministically and exactly, writes exactly this continuation.

        Of the decoding settings only the commit order (`remasking` low_confidence / margin / entropy) is kept. Every
        step commits exactly one token: LLaDA's schedule, no `threshold`, `factor` or `threshold_rule="fast_dllm"`
        (they commit several), no Dream schedule (its steps commit 0, 1 or 2). Nothing is drawn: temperature 0, and
        `remasking="random"` / `"origin"` (random commit orders) become low_confidence (the order `origin` proposes
        with). Forwards are exact: no approximate `cache` (prefix / dual); the exact block KV cache of block-causal
        families is kept (`use_cache`, same tokens).
        """
        length = len(continuation_ids)
        block = self._likelihood_block_length()
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens = _round_up(length, block)
        config.block_length = block
        config.steps, config.tokens_per_step = None, 1
        config.threshold, config.factor, config.threshold_rule = None, None, "scheduled"
        config.schedule = "llada"
        config.cache, config.cache_refresh_interval = "none", None
        config.temperature, config.top_k, config.top_p = 0.0, None, None
        config.stop_at_eos = False
        if config.remasking in ("random", "origin"):
            config.remasking = "low_confidence"
        config.validate()
        prompt = torch.tensor([self._fit(context_ids, continuation_ids)], dtype=torch.long, device=self._device)
        out = diffusion_generate(
            self.model,
            prompt,
            None,
            config,
            adapter=self.adapter,
            processing_class=self.tokenizer,
            use_cache=self.use_cache,
        )
        return out.sequences[0, prompt.shape[1] : prompt.shape[1] + length].tolist() == list(continuation_ids)

    def _forwards_per_estimate(self) -> int:
        return -(-self.mc_num // self.mc_batch_size)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Score `((context, continuation), context_ids, continuation_ids)` triples (lm-eval's tokenization)."""
        from tqdm.auto import tqdm

        if not self.check_greedy:
            self._warn_once("greedy", "check_greedy=False: every `is_greedy` is reported as False.")
        results, self._last_stats = [], []
        for (context, continuation), context_ids, continuation_ids in tqdm(
            requests, desc="diffusion_lm loglikelihood", disable=disable_tqdm or self._rank != 0
        ):
            start = time.perf_counter()
            logp = self._score(context_ids, continuation_ids, self._request_generator(context, continuation))
            greedy = self.check_greedy and self._is_greedy(context_ids, continuation_ids)
            forwards = self._forwards_per_estimate() + (
                _round_up(len(continuation_ids), self._likelihood_block_length()) if self.check_greedy else 0
            )
            results.append((logp, bool(greedy)))
            self._last_stats.append({"forwards": forwards, "seconds": time.perf_counter() - start})
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (logp, bool(greedy)))
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """The masked bound of each continuation; lm-eval's tokenization (an empty context becomes BOS/EOS)."""
        results = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        self._collect("loglikelihood", requests, self._last_stats)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of the masked bound over lm-eval's disjoint rolling windows (each window up to max_length tokens)."""
        from tqdm.auto import tqdm

        results, stats = [], []
        for req in tqdm(requests, desc="diffusion_lm loglikelihood_rolling", disable=disable_tqdm or self._rank != 0):
            (string,) = req.args
            windows = [
                make_disjoint_window(window)
                for window in get_rolling_token_windows(
                    self.tok_encode(string, add_special_tokens=False),
                    self.prefix_token_id,
                    max(1, self.max_length - 1),
                    1,
                )
            ]
            start = time.perf_counter()
            total = 0.0
            for w, (context_ids, continuation_ids) in enumerate(windows):
                total += self._score(context_ids, continuation_ids, self._request_generator(string, str(w)))
            results.append(total)
            stats.append(
                {"forwards": len(windows) * self._forwards_per_estimate(), "seconds": time.perf_counter() - start}
            )
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        self._collect("loglikelihood_rolling", requests, stats)
        return results

    # ------------------------------------------------------------------------------------------ speed records
    def _collect(self, request_type: str, requests, stats: list[dict]) -> None:
        """Keep one record per real request (lm-eval pads data-parallel shards with copies) and gather on rank 0."""
        seen: dict[int, int] = defaultdict(int)
        records = []
        for req, record in zip(requests, stats):
            seen[id(req)] += 1
            if seen[id(req)] > (getattr(req, "repeats", None) or 1):
                continue  # a padding copy
            records.append(
                {
                    "task": req.task_name,
                    "request_type": request_type,
                    "doc_id": req.doc_id,
                    "rank": self._rank,
                    **record,
                }
            )
        gathered = self.gather_object(records)
        if self._rank == 0:
            for part in gathered:
                self._records.extend(part)

    def reset_speed_metrics(self) -> None:
        self._records = []

    def speed_metrics(self) -> dict[str, dict]:
        """Per task: NFE and tokens per forward of generation (as `evaluate_few_step`), forwards of likelihoods.

        `nfe` is the mean over samples of the forward passes that committed at least one of the sample's tokens until
        it stopped (`DiffusionGenerateOutput.nfe_per_sample`), `tokens_per_forward` is kept tokens / those passes
        (`generation.speed.tokens_per_forward`),
        `nfe_per_batch` the decoder's own count per batch (mean over samples). Times: `decode_time_s` /
        `likelihood_time_s` are the seconds summed over processes (compute time); `wall_time_s` is the wall time of
        the task's requests, generation and likelihood: the processes run side by side, so it is the longest of their
        times, and `samples_per_s` is generated samples over the wall
        time of generation (`decode_wall_time_s`). Complete on rank 0 only.
        """

        def wall(records) -> float:
            per_rank: dict[int, float] = defaultdict(float)
            for r in records:
                per_rank[int(r.get("rank", 0))] += r["seconds"]
            return max(per_rank.values(), default=0.0)

        by_task: dict[str, dict] = {}
        for task in sorted({str(r["task"]) for r in self._records}):
            records = [r for r in self._records if str(r["task"]) == task]
            generation = [r for r in records if r["request_type"] == "generate_until"]
            scoring = [r for r in records if r["request_type"] != "generate_until"]
            entry: dict = {"wall_time_s": wall(records)}
            if generation:
                total_nfe = sum(r["nfe"] for r in generation)
                decode_wall = wall(generation)
                entry.update(
                    num_samples=len(generation),
                    nfe=total_nfe / len(generation),
                    tokens_per_forward=tokens_per_forward([r["committed"] for r in generation], total_nfe),
                    nfe_per_batch=sum(r["batch_nfe"] for r in generation) / len(generation),
                    tokens_per_step=generation[0]["tokens_per_step"],
                    steps=generation[0]["steps"],
                    decode_time_s=sum(r["seconds"] for r in generation),
                    decode_wall_time_s=decode_wall,
                    samples_per_s=len(generation) / decode_wall if decode_wall > 0 else float("inf"),
                )
            if scoring:
                entry.update(
                    num_likelihood_requests=len(scoring),
                    likelihood_forwards=sum(r["forwards"] for r in scoring),
                    likelihood_time_s=sum(r["seconds"] for r in scoring),
                )
            by_task[task] = entry
        return by_task

    def get_model_info(self) -> dict:
        """What lm-eval writes under `config`: the decoding and likelihood settings, and the speed per task."""
        config = self.generation_config
        per_task = () if self._max_new_tokens is not None else ("max_new_tokens",)  # else: the task's max_gen_toks
        return {
            MODEL_NAME: {
                "model_name": str(self.model_name),
                "adapter": self.adapter.name,
                "generation_config": dict(sorted(decoding_settings(config, exclude=per_task).items())),
                "loglikelihood": {
                    "mc_num": self.mc_num,
                    "mc_batch_size": self.mc_batch_size,
                    "block_length": self._likelihood_block_length(),
                    "check_greedy": self.check_greedy,
                },
                "world_size": self._world_size,
                "tasks": self.speed_metrics(),
            }
        }
