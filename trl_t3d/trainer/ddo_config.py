"""Configuration of `DDOTrainer` (T3D: trajectory self-distillation with Direct Discriminative Optimization)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers.utils import logging
from trl.trainer.base_config import _BaseConfig

from ..objectives import loss_term_class, resolve_objective

logger = logging.get_logger(__name__)

# Settings a preset decides, for every one of these fields left unset (None). "recommended": T3D's loss on the
# measured state sampling; its objective was chosen by the pre-registered rule of benchmarks/protocol_rule.md applied to
# validation results (benchmarks/results/objective_protocol.md; "t3d_mf" is recommended per geometry for block-causal
# families in short blocks, by `loss_type="t3d_mf"`); "t3d_paper" is the paper's exact recipe
# (T3D's configs/ddo_sdar_full_self.yaml), kept to reproduce it.
PRESETS: dict[str, dict[str, Any]] = {
    "recommended": {
        "loss_type": ["t3d"],
        "mask_ratio_exponent": 0.0,
        "random_token_ratio": 0.0,
        "ref_sync_steps": 0,
        "generation_temperature": 0.0,
    },
    "t3d_paper": {
        "loss_type": ["t3d"],
        "mask_ratio_exponent": 8.0,
        "random_token_ratio": 0.1,
        "ref_sync_steps": 10,
        "generation_temperature": 0.1,
    },
}


@dataclass
class DDOConfig(_BaseConfig):
    r"""
    Configuration class for [`DDOTrainer`].

    Only the parameters specific to T3D/DDO are listed here; see [`~transformers.TrainingArguments`] for the rest.
    The loss weights, learning rate, mask ratios and block settings are the T3D paper's
    (`configs/ddo_sdar_full_self.yaml`). Five settings come from a `preset` instead:

    | field | `"recommended"` (default) | `"t3d_paper"` |
    |---|---|---|
    | `loss_type` | `"t3d"` (DDO + path loss; objective protocol) | `"t3d"` (DDO + path loss) |
    | `mask_ratio_exponent` | 0 (ratios drawn uniformly) | 8 (91% fully masked blocks) |
    | `random_token_ratio` | 0 | 0.1 |
    | `ref_sync_steps` | 0 (frozen teacher) | 10 |
    | `generation_temperature` | 0 (greedy teacher) | 0.1 |

    Why the defaults are not the paper's, from the five-task suite (`benchmarks/task_suite.py`, teachers trained from
    scratch, 3 seeds; README "Which objective"):

    - States: the paper's settings cost 4-10 points at one token per step (a student must stay exact at full-step
      decoding), while uniform mask ratios without random tokens cost at most 0.5 with T3D's loss. Few-step decoding
      visits partially decoded blocks (ratios 0.75 / 0.5 / 0.25), which p(r) ∝ r^8 almost never trains on, and random
      tokens teach states no decoder produces.
    - Objective: T3D's loss (`"t3d"`), chosen by the pre-registered rule of `benchmarks/protocol_rule.md` applied to
      the validation results of `benchmarks/objective_protocol.py` (README "Which objective"). The mean-field term
      (`"t3d_mf"`, trl-t3d's, not the paper's) ranked first on SDAR in blocks of 4 (94.6 vs NTD 76.2 and T3D 59.6 at
      4 tokens per step on a paraphrase task) but lost 1.7 points at one token per step to T3D, more than the rule
      allows; it is the recommendation for block-causal families in blocks of 4 (`loss_type="t3d_mf"`) and costs
      `mean_field_queries` (1) more no-grad reference forwards per micro-batch. LLaDA-style geometry (blocks of 32)
      has no evidence yet: its CPU-scale teachers did not reach the protocol's bands.

    The frozen, greedy teacher is what the suite measured; multi-round self-play (`ref_sync_steps`) remains available.
    A field you set explicitly always wins over the preset. Some TRL/transformers defaults are overridden
    (`learning_rate=1e-5`, `logging_steps=10`, `remove_unused_columns=False`, `bf16` only when a GPU is present).

    Parameters:
        preset (`str`, *optional*, defaults to `"recommended"`):
            Where the five settings above come from when left unset: `"recommended"` (states measured on the task
            suite, objective chosen by the objective protocol) or `"t3d_paper"` (the paper's exact recipe; the shipped recipes use it).

        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for `from_pretrained` of the adapter's auto class (e.g. `AutoModel` for LLaDA), used
            when `model` is a name or path: `dtype`, `quantization_config` (QLoRA: a `BitsAndBytesConfig` or its
            dict), `attn_implementation`, `revision`...
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow remote modeling code (LLaDA, Dream, SDAR ship their own). Passed to model, config and tokenizer.
        adapter (`str`, *optional*):
            Model family adapter ("llada", "dream", "sdar", "generic", ...). `None` detects it from the config.
        mask_token_id (`int`, *optional*):
            Mask token id; `None` takes it from the tokenizer, then the model config.
        lora_target_modules (`list[str]`, *optional*):
            LoRA targets used when `peft_config.target_modules` is unset. `None` uses the family adapter's list
            (LLaDA: `q_proj`, `k_proj`, `v_proj`, `attn_out`, `ff_proj`, `up_proj`, `ff_out`). Targets that match no
            Linear module of the model raise an error instead of training nothing.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Disable dropout in policy and reference, so both score a state the same way.
        pure_half_precision (`bool`, *optional*, defaults to `False`):
            Full fine-tuning of a model loaded in bfloat16/float16 (e.g. `model_init_kwargs={"dtype": "bfloat16"}`)
            keeps fp32 master weights by default: the trained weights are upcast to fp32 (the reference stays in
            the loaded dtype), `bf16=True` computes in bfloat16 under autocast, and the final `save_model` writes the
            loaded dtype. AdamW steps on bf16 weights directly round most small updates away (measured on a tiny
            LLaDA, 3 steps at lr 1e-5: 16% of the weights changed at all, against 100% with fp32 masters). `True`
            trains the half-precision weights as loaded (half the weight memory), with a warning. LoRA adapters and
            DeepSpeed ZeRO (its own fp32 master copy) are unaffected.

        > Parameters that control the data

        max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
            Prompts longer than this are cut from the left (counted and logged).
        max_completion_length (`int` or `None`, *optional*, defaults to `1024`):
            Examples whose completion is longer are dropped whole (counted and logged): a cut completion would
            misalign its step map.
        block_length (`int`, *optional*):
            Training block length. `None` uses the dataset's decoding `block_length` (column or metadata). T3D
            trains SDAR with 8 while decoding with 4.
        dataset_num_proc (`int`, *optional*):
            Processes for dataset validation.

        > Parameters that control the states x_t ("trace" masking)

        mask_ratios (`list[float]`, *optional*, defaults to `[1.0, 0.75, 0.5, 0.25]`):
            Candidate shares r of a block still masked in x_t (the r·n tokens the decoder committed last).
        mask_ratio_exponent (`float`, *optional*):
            r is drawn per example with probability ∝ r^exponent. `None` takes the preset's: 0 (uniform) for
            `"recommended"`, 8 (0.906 / 0.091 / 0.0035 / 0.00001) for `"t3d_paper"`.
        random_token_ratio (`float`, *optional*):
            Share of the masked set given uniform random tokens instead of the mask token (at least one per example
            when > 0); the loss still covers them. `None` takes the preset's: 0 (`"recommended"`), 0.1
            (`"t3d_paper"`).
        max_trailing_eos_tokens (`int` or `None`, *optional*, defaults to `2`):
            Past a completion's first EOS, how many EOS/padding tokens are still trained (T3D's `post_num`).
            Bidirectional families decode the whole canvas (e.g. 1024 tokens for a 300-token answer), so most blocks
            can be pure trailing EOS: later ones never enter the loss, and a block with nothing else to train is never
            drawn, so no forward is spent on it. `None` trains every position.

        > Parameters that control the loss

        loss_type (`str` or `list[str]`, *optional*):
            The objective. A named one: `"t3d_mf"` (T3D's loss + the mean-field term),
            `"t3d"` (DDO + `lambda_path` x path loss, the paper's; both presets'), `"ntd"` (naive
            trajectory distillation: masked cross-entropy on the same trajectory states, the paper's baseline),
            `"ntd_mf"` (NTD + the mean-field term), or one term's name alone; or a list of terms among `"ddo"`,
            `"path"`, `"ntd"`, `"certainty"` (dParallel's certainty forcing: the entropy of correct predictions on the
            masked positions), `"mean_field"` (mean-field reverse KL to the teacher: the student's one-step
            argmax fills the masked set and the frozen reference scores each position given the others,
            `mean_field_queries` reference forwards per step), `"tad"` (TAD, arXiv 2605.09536: hard cross-entropy
            on the positions decoded next, soft KL to the teacher on the distant ones), `"sft"` (plain
            masked-diffusion SFT on the teacher's completions, random masks as in pretraining) and any term
            registered with `trl_t3d.register_loss_term`, summed with `loss_weights`. `None` takes the preset's.
            Every objective shares the states, the collator and the metrics, so one flag compares them on your data.
            Without a term that reads the reference (`"ddo"`, `"mean_field"`, `"tad"`) no reference is kept or run.
        loss_weights (`list[float]`, *optional*):
            Weights of the `loss_type` terms, in order. `None`: each term's default weight (1, and `lambda_path`
            for `"path"`).
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the DDO fake term `-log(1 - σ(β·log p_θ(ŷ)/p_ref(ŷ)))`.
        beta (`float`, *optional*, defaults to `0.1`):
            Scale of the per-token (mean) log-likelihood ratio in DDO's implicit discriminator.
        lambda_path (`float`, *optional*, defaults to `0.2`):
            Weight of the trajectory path loss (cross-entropy on `y` averaged over step levels). DDO alone collapses.
        path_k_steps (`int`, *optional*, defaults to `4`):
            Tokens per path level: level l holds the first (l+1)·k tokens of each block in decode order.
        reference_temperature (`float`, *optional*, defaults to `0.0`):
            Temperature of the fake sample ŷ drawn from the reference at the masked positions: 0 = argmax, else
            Gumbel-max (drawn once and scored by both models).
        mean_field_queries (`int`, *optional*, defaults to `1`):
            Reference forwards per step of the `"mean_field"` term; each puts `mean_field_positions` masked positions
            per block back to the mask token, so up to queries x positions positions per block are trained. One
            query keeps a `t3d_mf` step at about 1.1-1.3x a `t3d` step (3 forwards against 2); 4 queries cost 1.7-1.9x
            (`benchmarks/train_step.py --only objective_cost`). The reference plays the teacher: with
            `ref_sync_steps > 0` it is the last synced policy for this term too.
        mean_field_positions (`int`, *optional*):
            Masked positions per block that one `"mean_field"` query puts back to the mask token (spaced in a random
            order). 1 gives each queried position's exact conditional given the student's fill; k > 1 trains k
            times the positions per reference forward, each conditioned without the other k - 1 (an approximation).
            `None` uses one position per 8 tokens of the block: 4 in blocks of 32, 1 in blocks of 4.
        tad_near_tokens (`int`, *optional*):
            `"tad"`: the masked positions decoded within this many next steps of their block are *near* (hard
            cross-entropy); the rest *distant* (soft KL to the teacher). `None` uses `student_tokens_per_step`.
        tad_distant_weight (`float`, *optional*, defaults to `1.0`):
            `"tad"`: weight of the distant positions' KL against the near positions' cross-entropy.
        mean_field_temperature (`float`, *optional*, defaults to `0.0`):
            Temperature of the student's one-step prediction that fills the masked set for the `"mean_field"` term:
            0 = its argmax, what few-step greedy decoding commits (measured best on the task suite); 1 = a sample of
            the student, whose expectation is the exact mean-field reverse-KL gradient.

        > Parameters that control the reference and multi-round self-play

        ref_sync_steps (`int`, *optional*):
            Every this many optimizer steps the reference becomes the current policy (full: weights copied; PEFT: a
            frozen "ref" adapter receives the trained adapter). 0 = frozen teacher. `None` takes the preset's: 0
            (`"recommended"`), 10 (`"t3d_paper"`).
        recollect_each_round (`bool`, *optional*, defaults to `False`):
            With a prompt-only dataset and `ref_sync_steps > 0`, collect fresh trajectories with the new reference at
            each round.

        > Parameters that control self-collected trajectories (prompt-only datasets)

        generation_config (`dict`, *optional*):
            A `DiffusionGenerationConfig` as a dict; when set it overrides the `generation_*` fields below.
        generation_max_new_tokens (`int`, *optional*):
            Completion budget of the teacher; `None` uses `max_completion_length`.
        generation_block_length (`int`, *optional*, defaults to `4`):
            Decoding block length of the teacher (T3D: 4).
        generation_tokens_per_step (`int`, *optional*, defaults to `1`):
            Tokens committed per teacher step (1 = slow, high-quality trajectories).
        generation_temperature (`float`, *optional*):
            Teacher sampling temperature. `None` takes the preset's: 0 (`"recommended"`), 0.1 (`"t3d_paper"`).
        generation_remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Teacher remasking policy.
        generation_batch_size (`int`, *optional*, defaults to `8`):
            Prompts decoded together during collection.
        generation_cache (`str`, *optional*, defaults to `"none"`):
            Teacher KV cache: `"none"` (exact, the default: trajectories are the teacher's own decoding), or Fast-dLLM's
            approximate `"prefix"` / `"dual"` cache for bidirectional teachers (faster collection, trajectories that
            can differ slightly from exact ones).

        > Parameters that describe the student (model card, saved generation config)

        student_tokens_per_step (`int`, *optional*, defaults to `4`):
            Recommended few-step decoding budget written into the model card and the saved
            `diffusion_generation_config.json`.
        student_cache (`str`, *optional*, defaults to `"none"`):
            KV cache written into the student's `diffusion_generation_config.json` (`"none"`, `"prefix"` or `"dual"`;
            bidirectional families only), so that its few-step decoding uses it by default.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs", "generation_config"]

    preset: str = field(
        default="recommended",
        metadata={
            "help": "Values of loss_type, mask_ratio_exponent, random_token_ratio, ref_sync_steps and "
            "generation_temperature left unset: recommended (measured on the task suite) or t3d_paper (the paper's "
            "recipe).",
            "choices": list(PRESETS),
        },
    )

    # Overridden TrainingArguments defaults
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (T3D: 1e-5)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every column: the DDO collator needs the trajectory columns."}
    )
    # transformers 5.24 renamed `gradient_checkpointing` to `activation_checkpointing` and warns (FutureWarning) when
    # the old name is set, as TRL's base config does by default: keep TRL's default (on) under the new name.
    activation_checkpointing: bool | None = field(
        default=True, metadata={"help": "Recompute activations in the backward pass to save memory (TRL: on)."}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing`."}
    )

    # Model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for `from_pretrained` when `model` is a string."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote modeling code."})
    adapter: str | None = field(default=None, metadata={"help": "Model family adapter; None detects it."})
    mask_token_id: int | None = field(default=None, metadata={"help": "Mask token id; None reads the tokenizer."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "LoRA targets when peft_config has none; None uses the family's list."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in policy and reference."})
    pure_half_precision: bool = field(
        default=False,
        metadata={"help": "Full fine-tuning: train bf16/fp16 weights as loaded instead of fp32 master weights."},
    )

    # Data
    max_prompt_length: int | None = field(default=512, metadata={"help": "Prompts are cut from the left."})
    max_completion_length: int | None = field(default=1024, metadata={"help": "Longer completions are dropped."})
    block_length: int | None = field(default=None, metadata={"help": "Training block length; None = dataset's."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset validation."})

    # States
    mask_ratios: list[float] = field(
        default_factory=lambda: [1.0, 0.75, 0.5, 0.25], metadata={"help": "Candidate mask ratios of a block."}
    )
    mask_ratio_exponent: float | None = field(default=None, metadata={"help": "p(r) ∝ r^exponent; None = preset's."})
    random_token_ratio: float | None = field(
        default=None, metadata={"help": "Share of masked positions given random tokens; None = preset's."}
    )
    max_trailing_eos_tokens: int | None = field(
        default=2, metadata={"help": "EOS/padding tokens trained past a completion's first EOS (T3D's post_num)."}
    )

    # Loss
    loss_type: list[str] | None = field(
        default=None,
        metadata={
            "help": "Objective: 't3d_mf', 't3d', 'ntd_mf', 'ntd', 'ddo', or a list of ddo/path/ntd/certainty/"
            "mean_field terms; None = preset's."
        },
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "Weights of the loss_type terms; None: 1, and lambda_path for 'path'."}
    )
    alpha: float = field(default=0.5, metadata={"help": "Weight of the DDO fake term."})
    beta: float = field(default=0.1, metadata={"help": "Scale of the log-likelihood ratio."})
    lambda_path: float = field(default=0.2, metadata={"help": "Weight of the path loss."})
    path_k_steps: int = field(default=4, metadata={"help": "Tokens per path level."})
    reference_temperature: float = field(default=0.0, metadata={"help": "Temperature of the fake sample; 0 = argmax."})
    mean_field_queries: int = field(
        default=1, metadata={"help": "Reference forwards per step of the mean_field term."}
    )
    mean_field_temperature: float = field(
        default=0.0, metadata={"help": "Temperature of the student's fill in the mean_field term; 0 = argmax."}
    )
    mean_field_positions: int | None = field(
        default=None,
        metadata={"help": "Masked positions per block in one mean_field query; None = one per 8 tokens of the block."},
    )
    tad_near_tokens: int | None = field(
        default=None, metadata={"help": "tad: positions decoded within this many steps are near; None = student's."}
    )
    tad_distant_weight: float = field(default=1.0, metadata={"help": "tad: weight of the distant positions' KL."})

    # Reference
    ref_sync_steps: int | None = field(
        default=None, metadata={"help": "Reference <- policy every N optimizer steps; 0 = off; None = preset's."}
    )
    recollect_each_round: bool = field(default=False, metadata={"help": "Collect fresh trajectories each round."})

    # Self-collection
    generation_config: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "DiffusionGenerationConfig as a dict for trajectory collection."}
    )
    generation_max_new_tokens: int | None = field(default=None, metadata={"help": "None = max_completion_length."})
    generation_block_length: int = field(default=4, metadata={"help": "Teacher decoding block length."})
    generation_tokens_per_step: int = field(default=1, metadata={"help": "Teacher tokens per step."})
    generation_temperature: float | None = field(
        default=None, metadata={"help": "Teacher temperature; None = preset's."}
    )
    generation_remasking: str = field(default="low_confidence", metadata={"help": "Teacher remasking policy."})
    generation_batch_size: int = field(default=8, metadata={"help": "Prompts decoded together."})
    generation_cache: str = field(
        default="none",
        metadata={"help": "Teacher KV cache (none = exact).", "choices": ["none", "prefix", "dual"]},
    )

    # Student
    student_tokens_per_step: int = field(default=4, metadata={"help": "Recommended few-step decoding budget."})
    student_cache: str = field(
        default="none",
        metadata={"help": "KV cache in the student's decoding config.", "choices": ["none", "prefix", "dual"]},
    )

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown preset={self.preset!r}: use one of {sorted(PRESETS)}.")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        # bf16 mixed precision by default only where it pays off (a GPU); on CPU keep fp32.
        if self.bf16 is None and not self.fp16 and (self.use_cpu or not torch.cuda.is_available()):
            self.bf16 = False
        super().__post_init__()
        if self.alpha < 0 or self.beta <= 0:
            raise ValueError(f"Need alpha >= 0 and beta > 0, got alpha={self.alpha}, beta={self.beta}.")
        if self.lambda_path < 0:
            raise ValueError(f"`lambda_path` must be >= 0, got {self.lambda_path}.")
        if self.path_k_steps < 1:
            raise ValueError(f"`path_k_steps` must be >= 1, got {self.path_k_steps}.")
        if not self.mask_ratios or any(not 0 < r <= 1 for r in self.mask_ratios):
            raise ValueError(f"`mask_ratios` must be values in (0, 1], got {self.mask_ratios}.")
        if not 0 <= self.random_token_ratio <= 1:
            raise ValueError(f"`random_token_ratio` must be in [0, 1], got {self.random_token_ratio}.")
        if self.max_trailing_eos_tokens is not None and self.max_trailing_eos_tokens < 0:
            raise ValueError(
                f"`max_trailing_eos_tokens` must be >= 0 (or None for no cap), got {self.max_trailing_eos_tokens}."
            )
        if self.reference_temperature < 0:
            raise ValueError(f"`reference_temperature` must be >= 0, got {self.reference_temperature}.")
        if self.mean_field_queries < 1:
            raise ValueError(f"`mean_field_queries` must be >= 1, got {self.mean_field_queries}.")
        if self.mean_field_positions is not None and self.mean_field_positions < 1:
            raise ValueError(f"`mean_field_positions` must be >= 1, got {self.mean_field_positions}.")
        if self.tad_near_tokens is not None and self.tad_near_tokens < 1:
            raise ValueError(f"`tad_near_tokens` must be >= 1 (or None), got {self.tad_near_tokens}.")
        if self.tad_distant_weight < 0:
            raise ValueError(f"`tad_distant_weight` must be >= 0, got {self.tad_distant_weight}.")
        if self.mean_field_temperature < 0:
            raise ValueError(f"`mean_field_temperature` must be >= 0, got {self.mean_field_temperature}.")
        if self.ref_sync_steps < 0:
            raise ValueError(f"`ref_sync_steps` must be >= 0, got {self.ref_sync_steps}.")
        if self.block_length is not None and self.block_length < 1:
            raise ValueError(f"`block_length` must be >= 1, got {self.block_length}.")
        for name in ("generation_cache", "student_cache"):
            if getattr(self, name) not in ("none", "prefix", "dual"):
                raise ValueError(f"`{name}` must be 'none', 'prefix' or 'dual', got {getattr(self, name)!r}.")
        if self.ref_sync_steps > 0 and not self.reads_reference():  # also validates loss_type
            raise ValueError(
                f"`ref_sync_steps`={self.ref_sync_steps} updates the reference, but loss_type={self.loss_type} has "
                "no term that reads it ('ddo' or 'mean_field'). Set ref_sync_steps=0 or add one of them."
            )
        self._warn_unused_term_settings()
        if self.recollect_each_round and self.ref_sync_steps == 0:
            raise ValueError("`recollect_each_round=True` needs rounds: set `ref_sync_steps > 0`.")
        self._check_sizes_and_teacher_decoding()

    def _warn_unused_term_settings(self):
        """A loss setting changed from its default while its term is not in the objective does nothing: say so."""
        terms = self.loss_terms()  # also validates loss_type
        defaults = {f.name: f.default for f in fields(self)}
        from ..objectives import loss_term_names

        owners = {}
        for term in loss_term_names():
            cls = loss_term_class(term)
            for name in (*cls.settings, *([cls.default_weight] if isinstance(cls.default_weight, str) else [])):
                owners[name] = term
        for name, term in owners.items():
            if name in defaults and term not in terms and getattr(self, name) != defaults[name]:
                logger.warning(
                    f"`{name}`={getattr(self, name)} has no effect: loss_type={list(terms)} has no '{term}' term "
                    f"(preset {self.preset!r}). Add '{term}' to loss_type, or drop `{name}`."
                )

    def _check_sizes_and_teacher_decoding(self):
        """Sizes must be positive, and the teacher's decoding settings valid now, not at the first collection."""
        for name in ("max_prompt_length", "max_completion_length", "generation_max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1 (or None), got {getattr(self, name)}.")
        for name in ("generation_batch_size", "student_tokens_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.mask_token_id is not None and self.mask_token_id < 0:
            raise ValueError(f"`mask_token_id` must be a token id (>= 0), got {self.mask_token_id}.")
        from ..generation import DiffusionGenerationConfig

        settings = self.teacher_generation_settings()
        if not self.generation_config and self.generation_max_new_tokens is None and self.generation_block_length:
            # derived from max_completion_length, which trajectories given as data never decode with
            settings["max_new_tokens"] = self.generation_block_length
        try:
            DiffusionGenerationConfig(**settings)
        except ValueError as err:
            raise ValueError(
                f"Invalid teacher decoding settings (the `generation_*` fields, or `generation_config`): {err}"
            ) from err

    def loss_terms(self) -> dict[str, float]:
        """The objective as `{term: weight}` (see `loss_type`), validated; every error names the valid choices."""
        return resolve_objective(self.loss_type, self.loss_weights, self)

    def reads_reference(self) -> bool:
        """Whether the objective has a term that reads the frozen reference (DDO, mean-field, TAD): else none is
        kept."""
        return any(loss_term_class(term).reads_reference for term in self.loss_terms())

    def teacher_generation_config(self, mask_token_id: int | None = None):
        """The teacher's decoding settings as a `DiffusionGenerationConfig` recording trajectories (step maps): the one
        builder of `DDOTrainer`'s self-collection and `trl-t3d distill`'s."""
        from ..generation import DiffusionGenerationConfig

        settings = {k: v for k, v in self.teacher_generation_settings().items() if v is not None}
        if mask_token_id is not None:
            settings.setdefault("mask_token_id", mask_token_id)
        settings.setdefault("output_step_map", True)
        settings.setdefault("return_dict_in_generate", True)
        return DiffusionGenerationConfig(**settings)

    def teacher_generation_settings(self) -> dict:
        """The teacher's decoding settings for self-collected trajectories: `generation_config`, else `generation_*`."""
        if self.generation_config:
            return dict(self.generation_config)
        return dict(
            max_new_tokens=self.generation_max_new_tokens or self.max_completion_length,
            block_length=self.generation_block_length,
            tokens_per_step=self.generation_tokens_per_step,
            temperature=self.generation_temperature,
            remasking=self.generation_remasking,
            cache=self.generation_cache,
        )
