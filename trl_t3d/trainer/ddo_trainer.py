"""`DDOTrainer`: T3D trajectory self-distillation of a diffusion LM with Direct Discriminative Optimization.

Per micro-batch, exactly one reference forward (no grad) and one policy forward, both at the same state x_t, give
every term of T3D's loss: the reference logits give log p_ref(y), the fake tokens ŷ (argmax or Gumbel, drawn once) and
log p_ref(ŷ); the policy logits give log p_θ(y), log p_θ(ŷ), the path, NTD and certainty losses. The T3D reference
code runs four. The mean-field term (the default objective's third) adds `mean_field_queries` reference forwards.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
import transformers
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import disable_dropout_in_model, use_adapter

from ..losses import mean_over_mask
from ..objectives import MeanFieldTerm, StepContext, loss_term_class
from ..resolved import DiffusionLM, load_diffusion_lm
from ..trajectories import dataset_metadata, is_prompt_only, prepare_trajectory_dataset
from .collator import DDODataCollator
from .ddo_config import DDOConfig
from .randomness import ROUND_KEY, STATE_KEY, KeyedRows, KeyedSampler, derive_seed, keyed_uniform
from .reference_state import load_reference, save_reference

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"
ROUNDS_FILE = "t3d_rounds.json"  # TRL's name (DPOTrainer) for the frozen copy of a trained adapter


# ------------------------------------------------------------------------------------------------ helpers
def _load(model_id: str, args: DDOConfig, adapter, processing_class) -> DiffusionLM:
    """`load_diffusion_lm` with `args.model_init_kwargs` (dtype, quantization_config, ...), family and mask id."""
    kwargs = dict(args.model_init_kwargs or {})
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs.pop("device_map", None)  # every process holds the whole model; accelerate places it
    return load_diffusion_lm(
        model_id, adapter=adapter, mask_token_id=args.mask_token_id, processing_class=processing_class, **kwargs
    )


def _refuse_merging(peft_model, reason: str) -> None:
    """Make `merge_and_unload` / `merge_adapter` raise (on the PeftModel and its LoRA model) instead of merging wrong."""

    def refuse(*args, **kwargs):
        raise ValueError(
            f"{reason} Keep the adapter unmerged: save it with `trainer.save_model()` and load it with "
            "`PeftModel.from_pretrained(base_model, path)`."
        )

    for target in (peft_model, peft_model.base_model):
        for method in ("merge_and_unload", "merge_adapter"):
            object.__setattr__(target, method, refuse)


def _checkpointing_enabled(args) -> bool:
    # transformers >= 5.24 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name mirrors it)
    return bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing)


def _checkpointing_kwargs(args):
    return getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs


def _set_checkpointing(args, enabled: bool, kwargs: dict | None = None) -> None:
    for prefix in ("activation", "gradient"):
        if hasattr(args, f"{prefix}_checkpointing"):
            setattr(args, f"{prefix}_checkpointing", enabled)
            if kwargs is not None:
                setattr(args, f"{prefix}_checkpointing_kwargs", kwargs)


def _model_id(model) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def _is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _linear_leaf_names(model) -> set[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return names


def _vocabulary_heads(model) -> list[str]:
    """Full names of the Linear layers that project onto the vocabulary (the LM head, whatever it is called)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and vocab is not None and module.out_features == vocab
    ]


def _keep_present_no_split_modules(model) -> None:
    """FSDP's transformer auto-wrap (accelerate) wraps the classes named in `_no_split_modules` and fails on any the
    model lacks (DiffusionGemma inherits Gemma4 layer names it replaces by its own; layers already sharded have FSDP
    classes). Keep the classes the model has."""
    names = getattr(model, "_no_split_modules", None)
    if names:
        present = {type(module).__name__ for module in model.modules()}
        model._no_split_modules = {name for name in names if name in present}


def _shard_weight_sharing_groups(groups, accelerator) -> None:
    """FSDP2: shard each group of weight-sharing modules as one unit, before accelerate wraps the rest (it skips
    modules that are already sharded). Same settings as accelerate's own `fully_shard` calls."""
    plugin = accelerator.state.fsdp_plugin
    if not groups or plugin.fsdp_version != 2:
        if groups:
            raise ValueError("This model shares weights between modules: train it with FSDP2 (`fsdp_version: 2`).")
        return
    if plugin.cpu_ram_efficient_loading:
        raise ValueError(
            "This model shares weights between modules, which accelerate's FSDP `cpu_ram_efficient_loading` (weights "
            "broadcast from rank 0 after sharding) cannot handle: set `fsdp_cpu_ram_efficient_loading: false` in your "
            "accelerate config."
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = getattr(accelerator, "torch_device_mesh", None)
    kwargs = {
        "reshard_after_forward": plugin.reshard_after_forward,
        "offload_policy": plugin.cpu_offload,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        "mesh": mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None,
    }
    for group in groups:
        fully_shard(group, **kwargs)


def _gathered(params):
    """Gather ZeRO-3 partitioned parameters for a read/write (a no-op context without ZeRO-3)."""
    if is_deepspeed_zero3_enabled():
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _without_dropout(module):
    """Score without dropout, as the frozen copy does in eval mode, yet keep train mode: in eval mode some layers
    change more than dropout (bitsandbytes repacks 4-bit weights for CPU inference)."""
    dropouts = [(m, m.p) for m in module.modules() if isinstance(m, torch.nn.Dropout) and m.p]
    for m, _ in dropouts:
        m.p = 0.0
    try:
        yield module
    finally:
        for m, p in dropouts:
            m.p = p


class DDOSyncRefModelCallback(SyncRefModelCallback):
    """TRL's reference sync for multi-round self-play: every `ref_sync_steps` optimizer steps the reference becomes
    the current policy (a frozen copy: its weights; PEFT: the "ref" adapter), and with `recollect_each_round` the new
    reference writes fresh trajectories."""

    def __init__(self, trainer: DDOTrainer):
        super().__init__(ref_model=trainer.ref_model, accelerator=trainer.accelerator)
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._restore_reference()

    def on_step_end(self, args, state, control, **kwargs):
        if args.ref_sync_steps and state.global_step % args.ref_sync_steps == 0:
            self.trainer.sync_reference()
            if args.recollect_each_round and self.trainer._prompt_dataset is not None:
                self.trainer._recollect()


# ------------------------------------------------------------------------------------------------ trainer
def _check_training_block(dataset, block_length: int | None, name: str) -> None:
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


class DDOTrainer(_BaseTrainer):
    """
    Trainer for T3D: few-step diffusion LMs by trajectory self-distillation with Direct Discriminative Optimization
    ([paper](https://huggingface.co/papers/2602.12262)). A subclass of [`~transformers.Trainer`] like TRL's trainers.
    The objective is `args.loss_type`: by default T3D's loss plus a mean-field reverse KL to the frozen teacher (see
    [`DDOConfig`]); the paper's own (`"t3d"`) and its baseline (`"ntd"`) are one flag away.

    Example:

    ```python
    >>> from trl_t3d import DDOConfig, DDOTrainer

    >>> trainer = DDOTrainer(
    ...     model="GSAI-ML/LLaDA-8B-Instruct",
    ...     args=DDOConfig(output_dir="llada-t3d", trust_remote_code=True),
    ...     train_dataset=trajectories,  # prompt_ids, completion_ids, step_map, block_length (or prompts only)
    ... )
    >>> trainer.train()
    ```

    Args:
        model (`str`, `DiffusionLM`, `PreTrainedModel` or `PeftModel`): the teacher/student. A name or path is
            loaded by `trl_t3d.load_diffusion_lm` with `args.model_init_kwargs` (`trust_remote_code` passes through);
            a `DiffusionLM` brings its tokenizer, adapter and special ids.
        ref_model (`str` or `PreTrainedModel`, *optional*): frozen reference. `None`: a frozen copy of `model`, or
            with PEFT the base model with adapters disabled (no second model in memory), or, for a `PeftModel`
            passed in with a trained adapter, a frozen copy of that adapter (TRL's "ref" adapter).
        args ([`DDOConfig`], *optional*): the configuration.
        data_collator (*optional*): defaults to [`DDODataCollator`] built from `args` and the adapter.
        train_dataset (`Dataset`): trajectories (`prompt_ids`, `completion_ids`, `step_map`, `block_length`, or text
            `prompt`/`completion` with a token-level `step_map`), or prompts only (`prompt` or `messages`): then the
            trainer collects the trajectories with the teacher first.
        eval_dataset (`Dataset`, *optional*): trajectories for evaluation of the loss.
        processing_class (`PreTrainedTokenizerBase`, *optional*): the tokenizer; loaded from `model` when `None`.
        peft_config (`PeftConfig`, *optional*): LoRA/QLoRA; empty `target_modules` resolve to the family's names.
        callbacks, optimizers: as in [`~transformers.Trainer`].
        adapter (`str` or `DiffusionAdapter`, *optional*): overrides `args.adapter`.
    """

    _tag_names = ["trl", "trl-t3d", "t3d", "ddo", "diffusion-lm"]
    _name = "T3D-DDO"
    _paper = {
        "title": "Few-Step Diffusion Language Models via Trajectory Self-Distillation with Direct Discriminative "
        "Optimization",
        "id": "2602.12262",
        "citation": "@article{t3d2026,\n    title   = {{Few-Step Diffusion Language Models via Trajectory "
        "Self-Distillation with Direct Discriminative Optimization}},\n    year    = 2026,\n    eprint  = "
        "{arXiv:2602.12262}\n}",
    }
    # compute_loss returns a per-micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model,
        ref_model=None,
        args: DDOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        adapter=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else (_model_id(model) or "model")
            args = DDOConfig(f"{str(name).rstrip('/').split('/')[-1]}-T3D")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: trajectories, or prompts to collect them from.")
        transformers.set_seed(args.seed)

        # 1. Models, resolved once: model, tokenizer, family adapter and special ids travel together from here on
        adapter = adapter or args.adapter
        if isinstance(model, str):
            self._teacher_id = model
            resolved = _load(model, args, adapter, processing_class)
        else:
            if args.model_init_kwargs:
                logger.warning("`model_init_kwargs` are ignored: the model is already instantiated.")
            inner = model.model if isinstance(model, DiffusionLM) else model
            self._teacher_id = _model_id(inner)
            if processing_class is None and not isinstance(model, DiffusionLM):
                processing_class = inner.__dict__.get("diffusion_processing_class")
                if processing_class is None and self._teacher_id is None:
                    raise ValueError("No tokenizer: pass `processing_class=` (the model has no name to load it from).")
                if processing_class is None:
                    processing_class = AutoTokenizer.from_pretrained(
                        self._teacher_id, trust_remote_code=args.trust_remote_code
                    )
            resolved = DiffusionLM.from_model(
                model, processing_class, adapter=adapter, mask_token_id=args.mask_token_id
            )
        self.diffusion_lm = resolved
        model, processing_class, self.adapter = resolved.model, resolved.processing_class, resolved.adapter
        for name in ("generation_cache", "student_cache"):
            if getattr(args, name) != "none" and not self.adapter.supports_approximate_cache:
                raise ValueError(
                    f"`{name}={getattr(args, name)!r}` is Fast-dLLM's approximate KV cache of bidirectional families; "
                    f"the '{self.adapter.name}' family does not take it. Set {name}='none'."
                )
        if isinstance(ref_model, str):
            ref_model = _load(ref_model, args, self.adapter.name, processing_class).model
        if ref_model is not None and ref_model is model:
            raise ValueError("`model` and `ref_model` must be different objects; omit `ref_model` for a frozen copy.")

        # 2. Gradient checkpointing: only where the model's code supports it
        if _checkpointing_enabled(args):
            base = model.get_base_model() if is_peft_model(model) else model
            if not (
                self.adapter.supports_gradient_checkpointing
                and getattr(base, "supports_gradient_checkpointing", False)
            ):
                logger.warning(
                    "Gradient checkpointing is not supported by this model's code (%s adapter, %s): training without "
                    "it. Set `activation_checkpointing=False` to silence this warning, or lower the batch size / use "
                    "LoRA if memory is short.",
                    self.adapter.name,
                    type(base).__name__,
                )
                _set_checkpointing(args, False)
            elif not _checkpointing_kwargs(args):
                _set_checkpointing(args, True, {"use_reentrant": False})

        # 3. Datasets: trajectories, or prompts to collect them from (with the teacher, before any adapter)
        self._prompt_dataset = None
        if self._is_prompt_only(train_dataset):
            self._prompt_dataset = train_dataset
            train_dataset = self._collect(model, processing_class, train_dataset, args)
        train_dataset = self._prepare(train_dataset, processing_class, args, "train")
        if eval_dataset is not None:
            eval_dataset = self._prepare(eval_dataset, processing_class, args, "eval")
        self._trajectory_metadata = dataset_metadata(train_dataset)
        # Rows carry their state key: states differ across ranks and workers, and replay exactly after a resume.
        if args.recollect_each_round and self._prompt_dataset is not None and args.dataloader_num_workers > 0:
            raise ValueError(
                "`recollect_each_round` swaps the trajectories every round in the main process, which dataloader "
                "workers (their own copies of the dataset) would never see: set `dataloader_num_workers=0`."
            )
        train_dataset = KeyedRows(
            train_dataset,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            shuffle=getattr(args, "train_sampling_strategy", "random") == "random",
        )
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: KeyedRows(d) for name, d in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = KeyedRows(eval_dataset)

        # 4. PEFT
        given_peft_model = is_peft_model(model)
        if given_peft_model and not any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "The PeftModel has no trainable parameter (an adapter loaded for inference). Load it with "
                "`PeftModel.from_pretrained(base_model, path, is_trainable=True)`."
            )
        if peft_config is not None:
            model = self._wrap_peft(model, peft_config, args)
        self._use_peft = is_peft_model(model)

        # 5. Reference: frozen copy (built before accelerate/deepspeed wraps the policy), or disabled adapters; none
        #    when the objective has no term that reads it (DDO, mean-field)
        self.loss_terms = args.loss_terms()
        self._loss_terms = [self._make_term(name, args) for name in self.loss_terms]
        self._eval_terms = [term for term in self._loss_terms if not term.training_only]
        if not args.reads_reference():
            if ref_model is not None:
                logger.warning(
                    "`ref_model` is unused: loss_type=%s has no 'ddo' or 'mean_field' term.", list(self.loss_terms)
                )
            ref_model = None
        elif ref_model is None and not self._use_peft:
            ref_model = self._frozen_copy(model, args)
        elif ref_model is None and (given_peft_model or args.ref_sync_steps > 0):
            # The adapter passed in is the teacher: the reference is a frozen copy of it, not the bare base model.
            # With rounds, the copy is made now, before FSDP / DeepSpeed wrap the model, so that it is sharded like
            # the trained adapter (a fresh LoRA adapter adds zero: the same reference as the bare base model).
            self._sync_reference_adapter(model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        if args.disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)

        self._saved_dtype = self._keep_fp32_master_weights(model, ref_model, args)

        if data_collator is None:
            data_collator = DDODataCollator(
                pad_token_id=self.adapter.pad_token_id,
                mask_token_id=self.adapter.mask_token_id,
                block_causal=self.adapter.block_causal,
                block_length=args.block_length,
                mask_ratios=args.mask_ratios,
                mask_ratio_exponent=args.mask_ratio_exponent,
                random_token_ratio=args.random_token_ratio,
                vocab_size=model.get_input_embeddings().num_embeddings,
                noise=self.adapter.noise,
                seed=args.seed,
                eos_token_ids=self.adapter.eos_token_ids,
                max_trailing_eos_tokens=args.max_trailing_eos_tokens,
            )

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )

        self.ref_model = ref_model
        if self.is_fsdp_enabled:  # sharded groups first: their classes (now FSDP ones) leave `_no_split_modules`
            _shard_weight_sharing_groups(self.adapter.fsdp_weight_sharing_groups(model), self.accelerator)
            _keep_present_no_split_modules(model.get_base_model() if self._use_peft else model)
        if self.ref_model is not None:
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed

                self.ref_model = prepare_deepspeed(self.ref_model, self.accelerator)
            elif self.is_fsdp_enabled:
                from trl.models.utils import prepare_fsdp

                self.ref_model = prepare_fsdp(self.ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)

        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._tokens_since_log = {"train": 0, "eval": 0}
        self._time_of_last_log = {"train": None, "eval": None}
        self._last_trained_key = -1  # the largest state key trained on this process (where a new round starts)
        if args.ref_sync_steps > 0:
            self.add_callback(DDOSyncRefModelCallback(self))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # -------------------------------------------------------------------------------------- data
    @staticmethod
    def _is_prompt_only(dataset) -> bool:
        return is_prompt_only(dataset)

    def _get_train_sampler(self, train_dataset=None):
        """Rows in the Trainer's order, as state keys `epoch * len + row` (see `trainer/randomness.py`)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if isinstance(dataset, KeyedRows) and strategy in ("random", "sequential"):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            self._keyed_sampler = KeyedSampler(len(dataset), seed, shuffle=strategy == "random")
            return self._keyed_sampler
        logger.warning(
            "train_sampling_strategy=%r yields row indices, not state keys: each row gets the same state in every "
            "epoch. Use 'random' or 'sequential' for fresh states each epoch.",
            strategy,
        )
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self):
        dataloader = super().get_train_dataloader()
        sampler = self.__dict__.pop("_keyed_sampler", None)
        if sampler is not None and hasattr(dataloader, "set_sampler"):
            # As accelerate does for its own seedable sampler: then `set_epoch` also reaches it through the
            # dataloader `skip_first_batches` makes on a multi-process resume (else that epoch replays epoch 0's keys).
            dataloader.set_sampler(sampler)
        return dataloader

    # -------------------------------------------------------------------------------------- randomness
    def _make_term(self, name: str, args):
        cls = loss_term_class(name)
        if cls is MeanFieldTerm:
            return cls(args, max_over_processes=self._max_over_processes)
        return cls(args)

    def _uniform(self, name: str, inputs: dict, counts: torch.Tensor, width: int, device) -> torch.Tensor:
        """Uniform noise of a batch, `(counts.sum(), width)` in example order: example i's `counts[i]` rows come from
        a generator seeded by `(seed, name, mode, state_key[i])` (see `trainer/randomness.py`), so they do not depend
        on the process, the batch or what was drawn before; evaluation draws its own streams. Batches without state
        keys (a collator of your own) draw from one stream per process and name, which a resume does not replay."""
        mode = "train" if self.model.training else "eval"
        keys = inputs.get(STATE_KEY)
        if keys is not None:
            return keyed_uniform(self.args.seed, f"{name}/{mode}", keys, counts, width, device)
        streams = self.__dict__.setdefault("_unkeyed_streams", {})
        if (name, mode) not in streams:
            logger.warning(
                "The batches carry no `state_key` (a data collator of your own?): the %s noise is drawn per process, "
                "so runs on different numbers of processes, and resumed runs, draw different noise.",
                name,
            )
            seed = derive_seed(self.args.seed, name, mode, self.args.process_index)
            streams[name, mode] = torch.Generator(device=device).manual_seed(seed)
        total = int(counts.sum())
        return torch.rand((total, width), generator=streams[name, mode], device=device, dtype=torch.float64)

    def _prepare(self, dataset, processing_class, args, name):
        if isinstance(dataset, dict):
            return {key: self._prepare(d, processing_class, args, key) for key, d in dataset.items()}
        if not isinstance(dataset, Dataset):
            raise TypeError(f"The {name} dataset must be a `datasets.Dataset`, got {type(dataset).__name__}.")
        dataset, stats = prepare_trajectory_dataset(
            dataset,
            processing_class,
            args.max_prompt_length,
            args.max_completion_length,
            mask_token_id=self.adapter.mask_token_id,
            pad_token_id=self.adapter.pad_token_id,
            block_length=args.block_length,
            return_stats=True,
        )
        logger.info("%s trajectories: %s", name, stats.to_dict())
        self.__dict__.setdefault("_dataset_stats", {})[name] = stats.to_dict()
        _check_training_block(dataset, args.block_length, name)
        return dataset

    def _generation_config(self, args):
        settings = args.teacher_generation_settings()
        settings.setdefault("mask_token_id", self.adapter.mask_token_id)
        settings.setdefault("output_step_map", True)
        settings.setdefault("return_dict_in_generate", True)
        from ..generation import DiffusionGenerationConfig

        return DiffusionGenerationConfig(**settings)

    def _collect(self, model, processing_class, prompts, args, lockstep: bool = False):
        from ..collect import collect_trajectories

        if not getattr(model, "hf_device_map", None) and not _is_quantized(model):
            model.to(args.device)  # decode where training will run, not on the CPU the model was loaded to
        was_training = model.training
        model.eval()
        try:
            return collect_trajectories(
                dataclasses.replace(self.diffusion_lm, model=model),  # the current teacher, same ids and renderer
                None,
                prompts,
                self._generation_config(args),
                batch_size=args.generation_batch_size,
                teacher_name=self._teacher_id,
                seed=args.seed,
                lockstep=lockstep,
            )
        finally:
            model.train(was_training)

    def _recollect(self, start_key: int | None = None):
        """New round: fresh trajectories from the reference of the round (at a sync, the policy it was just copied
        from; on a resume, the restored reference, so the resumed round trains on the data the interrupted one had),
        served from `start_key` on (default: the key after the last one trained).

        A sharded reference (FSDP, ZeRO-3) gathers weights in every forward, so the ranks decode in lockstep: each
        runs as many forwards as the busiest (`lockstep_forwards`)."""
        start_key = self._next_round_start() if start_key is None else start_key
        sharded = self.is_fsdp_enabled or is_deepspeed_zero3_enabled()
        with torch.no_grad(), self._reference(self.model) as reference:
            module = self.accelerator.unwrap_model(reference)
            dataset = self._collect(module, self.processing_class, self._prompt_dataset, self.args, lockstep=sharded)
        self.train_dataset.swap(self._prepare(dataset, self.processing_class, self.args, "train"), start_key)
        self._round_starts = [*self.__dict__.get("_round_starts", []), start_key]

    # -------------------------------------------------------------------------------------- models
    def _wrap_peft(self, model, peft_config, args):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if is_peft_model(model):
            raise ValueError("`model` is already a PeftModel: omit `peft_config`, or pass the base model.")
        linear_names = _linear_leaf_names(model)
        targets = peft_config.target_modules
        if targets is None:
            if args.lora_target_modules:
                targets = list(args.lora_target_modules)
            else:
                targets = self.adapter.resolve_lora_targets(model)
            peft_config.target_modules = set(targets)
        if not isinstance(targets, str):  # a regex or "all-linear" is left to PEFT
            # Leaf names ("q_proj") or full module names (DiffusionGemma's adapter names text layers only).
            full_names = {name for name, _ in model.named_modules()}
            found = [t for t in targets if t in linear_names or t in full_names]
            if not found:
                raise ValueError(
                    f"None of the LoRA target_modules {sorted(targets)} names a Linear module of this model (its "
                    f"Linear names: {sorted(linear_names)}). The '{self.adapter.name}' family uses "
                    f"{list(self.adapter.lora_target_modules)}; leave `target_modules` unset to use them."
                )
            missing = sorted(set(targets) - set(found))
            if missing:
                logger.warning("LoRA target_modules %s match no module of this model and are ignored.", missing)
        if getattr(peft_config, "task_type", None) == "CAUSAL_LM" and not hasattr(
            model, "prepare_inputs_for_generation"
        ):
            # LLaDA / Dream load with AutoModel and are no GenerationMixin: PEFT's causal-LM wrapper would crash.
            logger.info("%s is not a transformers generation model: LoRA with task_type=None.", type(model).__name__)
            peft_config.task_type = None
        heads = _vocabulary_heads(model)
        if heads and not getattr(peft_config, "exclude_modules", None):
            # LLaDA names its LM head `ff_out`, like its MLP output: keep LoRA off the vocabulary projection.
            peft_config.exclude_modules = heads
        if _is_quantized(model):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=_checkpointing_enabled(args))
        model = get_peft_model(model, peft_config)
        if self.adapter.lora_merge_unsafe_reason:
            _refuse_merging(model, self.adapter.lora_merge_unsafe_reason)
        return model

    def _keep_fp32_master_weights(self, model, ref_model, args):
        """Full fine-tuning of a half-precision model trains fp32 master weights (see `DDOConfig.pure_half_precision`);
        returns the loaded dtype that the final save writes back, or None."""
        dtype = getattr(model, "dtype", None)
        if self._use_peft or dtype not in (torch.bfloat16, torch.float16) or _is_quantized(model):
            return None
        if args.pure_half_precision:
            logger.warning(
                "Training the %s weights as loaded (`pure_half_precision=True`): AdamW updates below half a unit of the "
                "last place are rounded away (at lr 1e-5 most of them).",
                dtype,
            )
            return None
        if args.deepspeed_plugin is not None or is_deepspeed_zero3_enabled():
            return None  # DeepSpeed keeps its own fp32 master copy of the weights
        logger.info(
            "Full fine-tuning of a %s model: the trained weights are kept in fp32 (master weights; the reference stays "
            "%s)%s. `pure_half_precision=True` trains them in %s instead.",
            dtype,
            dtype,
            "; compute in bf16 under autocast" if args.bf16 else "; `bf16=True` computes in bf16 under autocast",
            dtype,
        )
        model.float()
        if ref_model is not None and not (args.bf16 or args.fp16):
            ref_model.float()  # fp32 compute: the reference scores in fp32 too, so policy and reference agree at step 0
        return dtype

    def _save(self, output_dir=None, state_dict=None):
        """The final save writes the dtype the model was loaded in; checkpoints keep the fp32 master weights."""
        if self._saved_dtype is not None and not self.__dict__.get("_saving_checkpoint"):
            if state_dict is None:
                state_dict = self.accelerator.unwrap_model(self.model).state_dict()
            state_dict = {k: v.to(self._saved_dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        return super()._save(output_dir, state_dict)

    @staticmethod
    def _frozen_copy(model, args):
        """A frozen reference equal to the policy. Under ZeRO-3 the weights are partitioned: gather before copying."""
        if _is_quantized(model):
            raise ValueError(
                "A quantized model can only be trained with PEFT (QLoRA): pass a `peft_config`, whose disabled "
                "adapters then serve as the reference."
            )
        if is_deepspeed_zero3_enabled():
            # `_from_config` builds under zero.Init and initializes the partitioned weights the ZeRO-3 way (a plain
            # constructor runs `_init_weights` on empty shards and fails).
            ref = type(model)._from_config(copy.deepcopy(model.config), dtype=model.dtype)
            with _gathered(list(model.parameters()) + list(ref.parameters())):
                for dst, src in zip(ref.parameters(), model.parameters(), strict=True):
                    dst.data.copy_(src.data)
            return ref
        return copy.deepcopy(model)

    @contextlib.contextmanager
    def _reference(self, model):
        """The module that scores as reference: the frozen copy, or (PEFT) the policy with the frozen "ref" adapter
        (after a sync, or when a trained adapter was passed in) or with adapters disabled; never with dropout.
        """
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(model)
        name = REFERENCE_ADAPTER if REFERENCE_ADAPTER in unwrapped.peft_config else None
        with use_adapter(unwrapped, name), _without_dropout(unwrapped):
            yield unwrapped

    @torch.no_grad()
    def sync_reference(self):
        """Reference <- current policy (multi-round self-play)."""
        policy = self.accelerator.unwrap_model(self.model)
        if self.ref_model is not None:
            ref = self.accelerator.unwrap_model(self.ref_model)
            SyncRefModelCallback.sync_target_model(policy, getattr(ref, "module", ref), alpha=1.0)  # ZeRO-3 aware
        else:
            self._sync_reference_adapter(policy)
        self._metrics["train"]["ref_syncs"].append(1.0)
        logger.info("Reference synced to the policy at step %d.", self.state.global_step)

    @staticmethod
    @torch.no_grad()
    def _sync_reference_adapter(policy):
        """The "ref" adapter <- a frozen copy of the trained adapter, made once without dropout (deterministic)."""
        active = policy.active_adapter
        if REFERENCE_ADAPTER not in policy.peft_config:
            ref_config = copy.deepcopy(policy.peft_config[active])
            if hasattr(ref_config, "lora_dropout"):
                ref_config.lora_dropout = 0.0
            ref_config.inference_mode = True
            policy.add_adapter(REFERENCE_ADAPTER, ref_config)
            policy.set_adapter(active)  # keeps the trained adapter trainable and active
        params = dict(policy.named_parameters())
        pairs = [
            (params[name.replace(f".{active}.", f".{REFERENCE_ADAPTER}.")], p)
            for name, p in params.items()
            if f".{active}." in name and name.replace(f".{active}.", f".{REFERENCE_ADAPTER}.") in params
        ]
        if not pairs:
            raise RuntimeError("Could not pair the trained adapter's weights with the reference adapter's.")
        with _gathered([p for pair in pairs for p in pair]):
            for dst, src in pairs:
                dst.requires_grad_(False)
                dst.data.copy_(src.data)

    # -------------------------------------------------------------------------------------- loss
    def _completion_logits(self, model, inputs):
        return self.adapter.completion_logits(
            model,
            inputs["prompt_ids"],
            inputs["prompt_attention_mask"],
            inputs["xt"],
            clean_completion=inputs["x0"] if self.adapter.block_causal else None,
            block_length=int(inputs["block_length"][0]),
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective's terms over one shared `StepContext`: the policy forward at x_t and the reference forward
        run once, and only if a term reads them (T3D's loss: one of each, where the paper's code runs four)."""
        mode = "train" if self.model.training else "eval"
        terms = self._loss_terms if mode == "train" else self._eval_terms
        ctx = self._step_context(model, inputs, mode)
        outputs = {term.name: term.compute(ctx) for term in terms}
        if outputs:
            loss = sum(self.loss_terms[name] * out.loss for name, out in outputs.items()).mean()
        else:  # every term is training-only
            loss = torch.zeros((), device=ctx.loss_mask.device)
        self._record_metrics(mode, outputs, inputs)
        if return_outputs:
            return loss, {"policy_real_logps": mean_over_mask(ctx.policy_token_logps, ctx.loss_mask)}
        return loss

    def _step_context(self, model, inputs, mode) -> StepContext:
        def reference_forward(state):
            with self._reference(model) as reference:
                return self._completion_logits(reference, state)

        return StepContext(
            inputs,
            args=self.args,
            adapter=self.adapter,
            mode=mode,
            policy_forward=lambda state: self._completion_logits(model, state),
            reference_forward=reference_forward if self.args.reads_reference() else None,
            uniform=self._uniform,
        )

    def _max_over_processes(self, count: int) -> int:
        """The maximum of `count` over processes: a sharded reference (ZeRO-3, FSDP) gathers its weights in every
        forward, so every rank must run as many (e.g. mean-field queries)."""
        if self.accelerator.num_processes > 1:
            count = int(self.accelerator.gather(torch.tensor([count], device=self.accelerator.device)).max())
        return count

    def _record_metrics(self, mode, outputs, inputs):
        gather = self.accelerator.gather_for_metrics
        values = {}
        for name, out in outputs.items():
            values[f"loss_{name}"] = out.loss
            values.update(out.metrics)
        if values:
            stacked = gather(torch.stack([t.detach().float().mean() for t in values.values()])[None]).mean(0)
            for key, value in zip(values, stacked.tolist()):
                self._metrics[mode][key].append(value)
        loss_mask = inputs["loss_mask"]
        inputs_tokens = inputs["prompt_attention_mask"].sum() + inputs["xt"].numel()
        self._tokens_since_log[mode] += int(gather(inputs_tokens.detach()[None]).sum())
        self._metrics[mode]["masked_tokens"].append(float(gather(loss_mask.sum()[None]).float().mean()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(val) / len(val) for key, val in self._metrics[mode].items() if val}
        now = time.perf_counter()
        last = self._time_of_last_log[mode]
        if last is not None and now > last and self._tokens_since_log[mode]:
            metrics["tokens_per_second"] = self._tokens_since_log[mode] / (now - last)
        self._time_of_last_log[mode], self._tokens_since_log[mode] = now, 0
        if mode == "eval":
            metrics = {f"eval_{key}": val for key, val in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._time_of_last_log["train"] is None:
            self._time_of_last_log["train"] = time.perf_counter()
        keys = inputs.get(STATE_KEY)
        if keys is not None:
            inputs = self._rows_of_current_round(inputs, keys)
            self._last_trained_key = max(self._last_trained_key, int(keys.max()))
        return super().training_step(model, inputs, num_items_in_batch)

    def _rows_of_current_round(self, inputs, keys):
        """The dataloader builds a batch ahead of its step: one built before a round swapped the trajectories is
        rebuilt from its keys with the new round's rows."""
        dataset, rounds = self.train_dataset, inputs.get(ROUND_KEY)
        if rounds is None or not isinstance(dataset, KeyedRows) or dataset.round == 0:
            return inputs
        keys = keys.tolist()
        if [dataset.locate(k)[0] for k in keys] == rounds.tolist():
            return inputs
        return self.data_collator([dataset[k] for k in keys])

    def _next_round_start(self) -> int:
        """The first state key after every key trained so far, on any process: where a new round's rows begin."""
        last = torch.tensor([self._last_trained_key], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            last = self.accelerator.gather(last)
        return int(last.max()) + 1

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        if self._time_of_last_log["eval"] is None:
            self._time_of_last_log["eval"] = time.perf_counter()
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -------------------------------------------------------------------------------------- saving
    def _student_generation_settings(self) -> dict:
        meta = self._trajectory_metadata
        block = meta.get("block_length") or self.args.block_length
        if (
            not block
            and self.train_dataset is not None
            and len(self.train_dataset)
            and "block_length" in self.train_dataset[0]
        ):
            block = self.train_dataset[0]["block_length"]  # metadata is lost by e.g. concatenate_datasets
        block = int(block or 4)
        tokens_per_step = max(1, min(self.args.student_tokens_per_step, block))
        max_new_tokens = meta.get("max_new_tokens")
        return {
            "max_new_tokens": int(max_new_tokens) if max_new_tokens and int(max_new_tokens) % block == 0 else None,
            "block_length": block,
            "tokens_per_step": tokens_per_step,
            "steps": None,
            "remasking": "low_confidence",
            "temperature": 0.0,
            "cache": self.args.student_cache,
            "mask_token_id": self.adapter.mask_token_id,
        }

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.is_world_process_zero():
            self._save_generation_config(output_dir)
            if not _internal_call:
                self.create_model_card(output_dir=output_dir)

    def _objective_summary(self) -> str:
        """The loss terms with their weights and the settings each one reads, for the model card."""
        parts = []
        for term in self._loss_terms:
            details = term.describe()
            parts.append(f"{term.name} x {self.loss_terms[term.name]:g}" + (f" ({details})" if details else ""))
        return f"`loss_type={list(self.loss_terms)}`: " + "; ".join(parts)

    def _save_generation_config(self, output_dir):
        settings = {k: v for k, v in self._student_generation_settings().items() if v is not None}
        from ..generation import DiffusionGenerationConfig

        try:
            DiffusionGenerationConfig(**settings).save_pretrained(output_dir)
        except Exception as err:  # the generation module is optional; never lose a checkpoint over it
            logger.warning("Could not save the DiffusionGenerationConfig: %s", err)

    def _save_checkpoint(self, model, trial):
        name = self.args.hub_model_id.split("/")[-1] if self.args.hub_model_id else Path(self.args.output_dir).name
        self.create_model_card(model_name=name)
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        checkpoint = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self._reference_lags_policy(self.state.global_step):  # the reference is an earlier policy: keep it
            save_reference(self._reference_parameters(), checkpoint, self.is_world_process_zero())
        if self.__dict__.get("_round_starts") and self.is_world_process_zero():  # where the current round's rows begin
            with open(os.path.join(checkpoint, ROUNDS_FILE), "w") as f:
                json.dump({"round_starts": self._round_starts}, f)

    # -------------------------------------------------------------------------------------- resuming
    def _reference_lags_policy(self, step: int) -> bool:
        """Whether, at `step`, the reference is the policy of an earlier round boundary (not the teacher, not now)."""
        k = self.args.ref_sync_steps
        return self.args.reads_reference() and k > 0 and step > k and step % k != 0

    def _reference_parameters(self) -> list:
        if self.ref_model is not None:
            ref = self.accelerator.unwrap_model(self.ref_model)
            return list(getattr(ref, "module", ref).named_parameters())
        policy = self.accelerator.unwrap_model(self.model)
        return [(n, p) for n, p in policy.named_parameters() if f".{REFERENCE_ADAPTER}." in n]

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # None: the Trainer says so
        self._resume_checkpoint = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    def _restore_reference(self) -> None:
        """A resumed run's reference is the one the interrupted run had at its checkpoint (called at train begin,
        once the checkpoint's weights are loaded and the models wrapped)."""
        checkpoint, step, k = self.__dict__.get("_resume_checkpoint"), self.state.global_step, self.args.ref_sync_steps
        if not checkpoint or not self.args.reads_reference() or not k or step < k:
            return  # the reference is still the teacher, as built in __init__
        restored = self._reference_lags_policy(step) and load_reference(self._reference_parameters(), checkpoint)
        if not restored:
            if self._reference_lags_policy(step):
                logger.warning(
                    "%s holds no reference weights (%s): the reference restarts from this checkpoint's policy instead "
                    "of the policy of step %d, so the run is not an exact continuation.",
                    checkpoint,
                    "t3d_reference.safetensors",
                    step - step % k,
                )
            self.sync_reference()
            self._metrics["train"].pop("ref_syncs", None)  # a restored reference, not a new round
        if self.args.recollect_each_round and self._prompt_dataset is not None:
            rounds_file = os.path.join(checkpoint, ROUNDS_FILE)
            if not os.path.isfile(rounds_file):
                raise FileNotFoundError(
                    f"{checkpoint} has no {ROUNDS_FILE} (where the interrupted round's trajectories begin): it was "
                    "written by an older trl-t3d. Resume from a checkpoint of this version, or start the run again."
                )
            with open(rounds_file) as f:
                start_key = json.load(f)["round_starts"][-1]
            self._recollect(start_key)  # the trajectories of the interrupted round, written by its reference

    def init_hf_repo(self, token=None, private=None):
        from ..hub import reaching_the_hub

        with reaching_the_hub(f"create the repository '{self.args.hub_model_id or Path(self.args.output_dir).name}'"):
            return super().init_hf_repo(token=token, private=private)

    def push_to_hub(self, *args, **kwargs):
        """Save the student (weights, tokenizer, decoding config, card) and upload it; an unreachable Hub is said so."""
        from ..hub import reaching_the_hub

        with reaching_the_hub(f"push the student in {self.args.output_dir}"):
            return super().push_to_hub(*args, **kwargs)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, output_dir=None, **kwargs):
        """README.md from TRL's card machinery: teacher, trajectory data, DDO settings, and a quick start that loads
        the student as saved (full model, or LoRA adapter on its base) with its recommended few-step decoding."""
        if not self.is_world_process_zero():
            return
        from ..hub import student_model_card, student_quick_start

        args, meta = self.args, self._trajectory_metadata
        output_dir = output_dir or args.output_dir
        teacher = self._teacher_id or meta.get("teacher") or "unknown"
        hub_teacher = teacher if teacher != "unknown" and not os.path.isdir(teacher) else None
        tags = sorted(set(self._tag_names) | ({tags} if isinstance(tags, str) else set(tags or [])))
        gen = self._student_generation_settings()
        dataset_name = dataset_name or meta.get("dataset_name")
        stats = self.__dict__.get("_dataset_stats", {}).get("train", {})
        name = model_name or Path(output_dir).name
        repo_id = self.hub_model_id or args.hub_model_id or name
        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if self._use_peft else base
        config = getattr(base, "config", None)
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        remote_code = (
            bool(getattr(config, "auto_map", None)) and getattr(config, "model_type", None) not in CONFIG_MAPPING
        )
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        quick_start = student_quick_start(
            repo_id,
            base_model=teacher if self._use_peft else None,
            trust_remote_code=remote_code,
            chat_template=getattr(tokenizer, "chat_template", None) is not None,
            block_length=gen["block_length"],
            tokens_per_step=gen["tokens_per_step"],
        )
        rounds = f"every {args.ref_sync_steps} optimizer steps" if args.ref_sync_steps else "never (one round)"
        training_details = f"""### T3D training

- Teacher / reference: `{teacher}` ({self.adapter.name} family; {"LoRA adapters" if self._use_peft else "full fine-tuning"})
- Trajectory data: {dataset_name or "self-collected or user trajectories"}; {stats.get("num_kept", "?")} trajectories
  ({stats.get("num_truncated_prompts", 0)} prompts cut, {stats.get("num_dropped_long_completions", 0)} long and
  {stats.get("num_dropped_empty_completions", 0)} empty completions dropped); teacher decoding: `{json.dumps(meta.get("generation_config", {}))}`
- Objective: {self._objective_summary()}
- Preset `{args.preset}`; states: mask ratios {list(args.mask_ratios)} (p ∝ r^{args.mask_ratio_exponent}), random-token ratio {args.random_token_ratio}
- Optimizer steps: {self.state.global_step}; learning rate {args.learning_rate}; reference ← policy {rounds}

Recommended decoding (saved as `diffusion_generation_config.json`, the default of `diffusion_generate`):
semi-autoregressive, block length {gen["block_length"]}, {gen["tokens_per_step"]} tokens per step
({-(-gen["block_length"] // gen["tokens_per_step"])} steps per block), low-confidence remasking, temperature 0."""
        card = student_model_card(
            model_name=name,
            repo_id=repo_id,
            quick_start=quick_start,
            training_details=training_details,
            teacher=teacher,
            base_model=hub_teacher,
            is_adapter=self._use_peft,
            dataset_name=dataset_name,
            tags=tags,
            trainer_name=self._name,
            paper=self._paper,
        )
        os.makedirs(output_dir, exist_ok=True)
        card.save(os.path.join(output_dir, "README.md"))
