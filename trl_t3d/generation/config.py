"""Decoding settings of a diffusion LM, saved next to the weights as `diffusion_generation_config.json`."""

from __future__ import annotations

import os

from transformers import GenerationConfig

DIFFUSION_GENERATION_CONFIG_NAME = "diffusion_generation_config.json"
REMASKING_POLICIES = ("low_confidence", "random", "margin", "entropy", "origin")
SCHEDULES = ("llada", "dream")
THRESHOLD_RULES = ("scheduled", "fast_dllm")
CACHE_MODES = ("none", "prefix", "dual")


class DiffusionGenerationConfig(GenerationConfig):
    """Semi-autoregressive block decoding settings (LLaDA's reference `generate`, plus parallel decoding).

    The completion of `max_new_tokens` tokens is cut into blocks of `block_length`, decoded left to right; inside a
    block, each denoising step (one forward pass) commits some of the still undecided positions.

    Args:
        max_new_tokens (`int`, defaults to 128): completion length (the canvas the model denoises).
        block_length (`int`, *optional*): semi-autoregressive block length; `None` means one block of
            `max_new_tokens` (fully parallel decoding). Must divide `max_new_tokens`.
        steps (`int`, *optional*): total number of denoising steps over all blocks, split evenly over the blocks as in
            LLaDA (must be a multiple of the number of blocks). Inside a block the commits are split evenly over the
            steps, the remainder going to the first steps.
        tokens_per_step (`int`, *optional*): commit this many tokens per step instead (the last step of a block takes
            the remainder). Give at most one of `steps` and `tokens_per_step`; with neither, 1 token per step.
        remasking (`str`, defaults to `"low_confidence"`): which predicted tokens to commit first:
            `"low_confidence"` (highest probability of the predicted token; LLaDA; Dream's `maskgit_plus`),
            `"margin"` (top-1 minus top-2 probability; Dream's `topk_margin`), `"entropy"` (exp(-entropy) of the
            predictive distribution; Dream's `entropy`), `"random"`, or `"origin"` (Dream's default: every undecided
            position is committed with probability 1 - s/t; needs `schedule="dream"`).
        schedule (`str`, defaults to `"llada"`): how many tokens each step of a block commits. `"llada"`: LLaDA's
            `get_num_transfer_tokens` (an even split, or `tokens_per_step`). `"dream"`: Dream's `diffusion_generate`
            (times `linspace(1, eps, steps + 1)`, `int(n_undecided * (1 - s / t))` tokens at each step, the rest at the
            last; `tokens_per_step` k gives a block ceil(block_length / k) steps); with one block (`block_length=None`)
            and greedy decoding it gives Dream's tokens.
        eps (`float`, defaults to `1e-3`): the last time of Dream's schedule (`schedule="dream"` only).
        threshold (`float`, *optional*): parallel decoding (Fast-dLLM): also commit every position whose confidence is
            >= threshold, so a block ends early when the model is confident. Not allowed with `remasking="random"`.
        factor (`float`, *optional*): Fast-dLLM's factor rule instead of a threshold: the r-th most confident position
            (r = 1, 2, ...) is committed when its confidence is >= 1 - factor / (r + 1).
        threshold_rule (`str`, defaults to `"scheduled"`): what `threshold` / `factor` add to. `"scheduled"`: every
            step commits at least its scheduled count (`steps` / `tokens_per_step`) plus the positions the rule passes.
            `"fast_dllm"`: Fast-dLLM's rule, no scheduled count: the most confident position and the ones the rule
            passes (leave `steps` and `tokens_per_step` unset).
        cache (`str`, defaults to `"none"`): approximate KV cache of bidirectional families (Fast-dLLM). `"none"`:
            every step runs the whole sequence (exact). `"prefix"`: the first forward of each block runs the whole
            sequence and caches what precedes the block; later steps run the block and everything after it.
            `"dual"`: later steps run only the block; what precedes and follows it comes from the cache. Faster, but
            a cached step's predictions differ slightly from exact ones (block-causal families are always cached
            exactly and reject this option).
        cache_refresh_interval (`int`, *optional*): with `cache="prefix"` / `"dual"`, every this many forwards of a
            block the whole sequence is run again (exact logits) and the cache refilled; `None` refreshes only at the
            block's first forward (Fast-dLLM). A speed/accuracy knob: 1 is exact decoding.
        temperature (`float`, defaults to 0.0): 0 is greedy; > 0 samples with Gumbel-max noise in float64.
        top_k (`int`, *optional*): sample only among the k most likely tokens.
        top_p (`float`, *optional*): sample only in the nucleus of probability mass `top_p`.
        mask_token_id (`int`, *optional*): overrides the adapter's mask token.
        eos_token_id (`int` or `list[int]`, *optional*): end-of-sequence ids; defaults to the adapter's.
        pad_token_id (`int`, *optional*): what fills a finished sequence after its EOS; defaults to the adapter's pad.
        stop_at_eos (`bool`, defaults to `True`): a sequence stops once an EOS is committed with everything before it
            decided (the rest is filled with pad and gets step -1); the loop stops when every sequence has.
        output_step_map (`bool`, defaults to `False`): return the step (forward pass index) of each committed token.
        return_dict_in_generate (`bool`, defaults to `False`): return a `DiffusionGenerateOutput` instead of a tensor.
    """

    def __init__(self, **kwargs):
        self.block_length = kwargs.pop("block_length", None)
        self.steps = kwargs.pop("steps", None)
        self.tokens_per_step = kwargs.pop("tokens_per_step", None)
        self.remasking = kwargs.pop("remasking", None) or "low_confidence"
        self.threshold = kwargs.pop("threshold", None)
        self.factor = kwargs.pop("factor", None)
        self.threshold_rule = kwargs.pop("threshold_rule", None) or "scheduled"
        self.schedule = kwargs.pop("schedule", None) or "llada"
        eps = kwargs.pop("eps", None)
        self.eps = 1e-3 if eps is None else eps
        self.cache = kwargs.pop("cache", None) or "none"
        self.cache_refresh_interval = kwargs.pop("cache_refresh_interval", None)
        self.mask_token_id = kwargs.pop("mask_token_id", None)
        stop_at_eos = kwargs.pop("stop_at_eos", None)
        self.stop_at_eos = True if stop_at_eos is None else stop_at_eos
        self.output_step_map = bool(kwargs.pop("output_step_map", False))
        for key, default in (("max_new_tokens", 128), ("temperature", 0.0), ("return_dict_in_generate", False)):
            if kwargs.get(key) is None:  # None means "the default", as in a config dict written by hand
                kwargs[key] = default
        super().__init__(**kwargs)

    # ------------------------------------------------------------------------------------------ derived values
    @property
    def resolved_block_length(self) -> int:
        return int(self.block_length or self.max_new_tokens)

    @property
    def num_blocks(self) -> int:
        return self.max_new_tokens // self.resolved_block_length

    def steps_per_block(self) -> int:
        """Number of denoising steps per block (an upper bound when `threshold` ends a block early)."""
        block = self.resolved_block_length
        if self.threshold_rule == "fast_dllm":
            return block  # at least one token per step
        if self.steps is not None:
            return self.steps // self.num_blocks
        per_step = self.tokens_per_step or 1
        return -(-block // per_step)

    def block_schedule(self) -> list[int]:
        """How many tokens each step of a block commits without a threshold or EOS stop (sums to the block length;
        Dream's schedule has steps that commit 0)."""
        import torch

        from .schedules import BlockSchedule

        block = self.resolved_block_length
        schedule, undecided, counts = BlockSchedule(self, block), torch.ones(1, block, dtype=torch.bool), []
        for step in range(schedule.num_steps):
            count = int(schedule.counts(step, undecided))
            undecided[0, sum(counts) : sum(counts) + count] = False
            counts.append(count)
        return counts

    # ------------------------------------------------------------------------------------------ validation
    def validate(self, strict=False, user_set_attributes=None):
        """GenerationConfig's checks, plus the diffusion-specific ones (each error says how to fix it)."""
        # The base class warns about temperature/top-k without `do_sample`; our sampling is set by temperature alone.
        quiet = {"temperature", "top_k", "top_p"}
        if user_set_attributes is not None:
            user_set_attributes = set(user_set_attributes) - quiet
        saved = {k: getattr(self, k, None) for k in quiet}
        for k in quiet:
            setattr(self, k, None)
        try:
            super().validate(strict=strict, user_set_attributes=user_set_attributes)
        finally:
            for k, v in saved.items():
                setattr(self, k, v)
        if not hasattr(self, "block_length"):  # called from GenerationConfig.__init__ before our fields exist
            return
        self._validate_diffusion()

    def _validate_diffusion(self):
        n = self.max_new_tokens
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"`max_new_tokens` must be a positive int, got {n!r}.")
        block = self.block_length
        if block is not None:
            if not isinstance(block, int) or block <= 0:
                raise ValueError(f"`block_length` must be a positive int or None (one block), got {block!r}.")
            if n % block != 0:
                raise ValueError(
                    f"`block_length`={block} does not divide `max_new_tokens`={n}. Set `max_new_tokens` to a multiple "
                    f"of {block} (e.g. {-(-n // block) * block}) or pick a `block_length` that divides {n}."
                )
        block = self.resolved_block_length
        blocks = n // block
        if self.steps is not None and self.tokens_per_step is not None:
            raise ValueError(
                f"Both `steps`={self.steps} and `tokens_per_step`={self.tokens_per_step} are set; they say the same "
                "thing. Set one of them and leave the other None."
            )
        if self.steps is not None:
            if not isinstance(self.steps, int) or self.steps <= 0:
                raise ValueError(f"`steps` must be a positive int, got {self.steps!r}.")
            if self.steps % blocks != 0:
                raise ValueError(
                    f"`steps`={self.steps} is not divisible by the number of blocks {blocks} (max_new_tokens={n} / "
                    f"block_length={block}). Use a multiple of {blocks}, e.g. steps={max(1, self.steps // blocks) * blocks}."
                )
            if self.steps // blocks > block:
                raise ValueError(
                    f"`steps`={self.steps} gives {self.steps // blocks} steps per block but a block has only {block} "
                    f"tokens, so some steps would commit nothing. Use steps <= {block * blocks}."
                )
        if self.tokens_per_step is not None:
            tps = self.tokens_per_step
            if not isinstance(tps, int) or tps <= 0:
                raise ValueError(f"`tokens_per_step` must be a positive int, got {tps!r}.")
            if tps > block:
                raise ValueError(
                    f"`tokens_per_step`={tps} is larger than `block_length`={block}. Use tokens_per_step <= {block} or "
                    "a longer block."
                )
            if block % tps and self.threshold_rule != "fast_dllm":
                import warnings

                counts = self.block_schedule()
                divisors = [d for d in range(1, block + 1) if block % d == 0]
                warnings.warn(
                    f"`tokens_per_step`={tps} does not divide `block_length`={block}: each block is decoded in "
                    f"{len(counts)} steps committing {counts} tokens ({block / len(counts):.2f} per step on average, "
                    f"not {tps}). For exactly {tps} per step use a block length that is a multiple of {tps}, or a "
                    f"tokens_per_step that divides {block} ({divisors}).",
                    UserWarning,
                    stacklevel=2,
                )
        if self.remasking not in REMASKING_POLICIES:
            raise ValueError(f"`remasking`={self.remasking!r} is unknown. Choose one of {list(REMASKING_POLICIES)}.")
        self._validate_parallel_rules()
        if self.temperature is None or float(self.temperature) < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 is greedy), got {self.temperature!r}.")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"`top_k` must be a positive int or None, got {self.top_k!r}.")
        if self.top_p is not None and not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1] or None, got {self.top_p!r}.")
        if (
            self.mask_token_id is not None
            and self.pad_token_id is not None
            and self.mask_token_id == self.pad_token_id
        ):
            raise ValueError(
                f"`pad_token_id` == `mask_token_id` == {self.mask_token_id}: padding would be read as noise. Use a "
                "distinct pad token (e.g. the EOS id)."
            )

    def _validate_parallel_rules(self):
        """Schedule, confidence rules (threshold / factor) and cache: each a known value, and no contradictions."""
        for name, value, allowed in (
            ("schedule", self.schedule, SCHEDULES),
            ("threshold_rule", self.threshold_rule, THRESHOLD_RULES),
            ("cache", self.cache, CACHE_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}`={value!r} is unknown. Choose one of {list(allowed)}.")
        if self.cache_refresh_interval is not None:
            interval = self.cache_refresh_interval
            if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
                raise ValueError(
                    f"`cache_refresh_interval` must be a positive int (forwards between full refreshes), got "
                    f"{interval!r}. Use None to refresh once per block."
                )
            if self.cache == "none":
                raise ValueError(
                    f"`cache_refresh_interval`={interval} refreshes Fast-dLLM's approximate cache, but cache='none' "
                    "decodes exactly already. Set cache='prefix' or 'dual', or drop cache_refresh_interval."
                )
        if self.threshold is not None and not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1], got {self.threshold!r}. Use None to disable it.")
        if self.factor is not None and not float(self.factor) > 0.0:
            raise ValueError(
                f"`factor` must be > 0 (Fast-dLLM uses 1.0), got {self.factor!r}. Use None to disable it."
            )
        if self.threshold is not None and self.factor is not None:
            raise ValueError(
                f"Both `threshold`={self.threshold} and `factor`={self.factor} are set; they are two rules for the "
                "same decision (which confident tokens to add). Keep one of them."
            )
        confidence_rule = "threshold" if self.threshold is not None else "factor" if self.factor is not None else None
        if confidence_rule and self.remasking in ("random", "origin"):
            raise ValueError(
                f"`{confidence_rule}` compares the model's confidence, which `remasking={self.remasking!r}` does not "
                f"use. Use remasking='low_confidence' (or 'margin'/'entropy') with a {confidence_rule}, or drop the "
                f"{confidence_rule}."
            )
        if self.threshold_rule == "fast_dllm":
            if confidence_rule is None:
                raise ValueError(
                    "`threshold_rule='fast_dllm'` says how a `threshold` (or `factor`) commits tokens, but neither is "
                    "set. Set e.g. threshold=0.9, or use threshold_rule='scheduled'."
                )
            if self.steps is not None or self.tokens_per_step not in (None, 1):
                raise ValueError(
                    f"`threshold_rule='fast_dllm'` has no scheduled count (it commits the most confident token and "
                    f"the ones the {confidence_rule} passes), so `steps`={self.steps} / "
                    f"`tokens_per_step`={self.tokens_per_step} would be ignored. Leave them unset, or use "
                    "threshold_rule='scheduled' to keep them as a floor."
                )
        if self.remasking == "origin" and self.schedule != "dream":
            raise ValueError(
                "`remasking='origin'` is Dream's algorithm and commits with Dream's probabilities 1 - s/t: set "
                "schedule='dream' (or pick another remasking policy)."
            )
        if self.schedule == "dream":
            if not 0.0 < float(self.eps) < 1.0:
                raise ValueError(f"`eps` must be in (0, 1) (Dream uses 1e-3), got {self.eps!r}.")

    # ------------------------------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | os.PathLike, config_file_name=None, push_to_hub=False, **kwargs):
        """Save as `diffusion_generation_config.json` (next to the model's own `generation_config.json`)."""
        return super().save_pretrained(
            save_directory, config_file_name or DIFFUSION_GENERATION_CONFIG_NAME, push_to_hub=push_to_hub, **kwargs
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name, config_file_name=None, **kwargs):
        return super().from_pretrained(
            pretrained_model_name, config_file_name or DIFFUSION_GENERATION_CONFIG_NAME, **kwargs
        )

    def to_diff_dict(self):
        """Keep the diffusion fields even when they equal GenerationConfig's defaults (e.g. temperature 0)."""
        out = super().to_diff_dict()
        for key in ("max_new_tokens", *DIFFUSION_FIELDS, "temperature"):
            out[key] = getattr(self, key)
        return out


# ---------------------------------------------------------------------------------------------- the decoding fields
# The one list of decoding fields, derived from the class: what DiffusionGenerationConfig adds to GenerationConfig
# (its own attributes), then the fields it shares with GenerationConfig and reads. Everything that names decoding
# settings (the CLI's decoding arguments, lm-eval's model arguments, the reports, the errors) reads them from here.
DIFFUSION_FIELDS: tuple[str, ...] = tuple(
    k for k in vars(DiffusionGenerationConfig()) if k not in vars(GenerationConfig())
)
# What to return, not how to decode.
OUTPUT_FIELDS: tuple[str, ...] = ("output_step_map", "return_dict_in_generate")
# GenerationConfig's sampling fields the decoder reads.
SAMPLING_FIELDS: tuple[str, ...] = ("temperature", "top_k", "top_p")
# The settings that decide what the decoder writes (the special ids `eos_token_id` / `pad_token_id` default to the
# model's and are left out).
DECODING_FIELDS: tuple[str, ...] = (
    "max_new_tokens",
    *(k for k in DIFFUSION_FIELDS if k not in OUTPUT_FIELDS),
    *SAMPLING_FIELDS,
)


def decoding_settings(config, exclude=()) -> dict:
    """`{field: value}` of the decoding fields of `config` (`DECODING_FIELDS`, less `exclude`), for reports."""
    return {key: getattr(config, key) for key in DECODING_FIELDS if key not in exclude}
