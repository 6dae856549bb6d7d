"""`DDOTrainer`: T3D trajectory self-distillation of a diffusion LM with Direct Discriminative Optimization.

This module is the trainer's construction, its loss (the objective's terms over one `StepContext`: see
`trl_t3d.objectives`) and its logging. Around it: `model_setup` (LoRA/QLoRA, checkpointing, fp32 master weights),
`distributed` (FSDP/ZeRO helpers), `rounds` (reference, multi-round self-play, resume), `randomness` (keyed draws),
`collator` (the states x_t) and `trl_t3d.hub` (the model card).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict

import torch
import transformers
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import disable_dropout_in_model

from ..losses import mean_over_mask
from ..objectives import MeanFieldTerm, StepContext, loss_term_class
from ..resolved import DiffusionLM, load_diffusion_lm
from ..trajectories import check_training_block, dataset_metadata, is_prompt_only, prepare_trajectory_dataset
from .collator import DDODataCollator
from .ddo_config import DDOConfig
from .distributed import (
    keep_present_no_split_modules,
    max_over_processes,
    prepare_reference,
    shard_weight_sharing_groups,
)
from .model_setup import checkpointing_enabled, configure_checkpointing, keep_fp32_master_weights, wrap_peft
from .randomness import STATE_KEY, KeyedRows, KeyedSampler, derive_seed, keyed_uniform
from .rounds import DDOSyncRefModelCallback, ReferenceRoundsMixin
from .saving import StudentSavingMixin

logger = logging.getLogger(__name__)


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


def _model_id(model) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


class DDOTrainer(ReferenceRoundsMixin, StudentSavingMixin, _BaseTrainer):
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
        configure_checkpointing(model, self.adapter, args)

        # 3. Datasets: trajectories, or prompts to collect them from (with the teacher, before any adapter)
        self._prompt_dataset = None
        if self._is_prompt_only(train_dataset):
            self._prompt_dataset = train_dataset
            train_dataset = self._collect(
                model, processing_class, train_dataset, args, cache_dir=os.path.join(args.output_dir, "trajectories")
            )
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
            model = wrap_peft(model, peft_config, self.adapter, args.lora_target_modules, checkpointing_enabled(args))
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

        self._saved_dtype = keep_fp32_master_weights(model, ref_model, args, self._use_peft)

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
            shard_weight_sharing_groups(self.adapter.fsdp_weight_sharing_groups(model), self.accelerator)
            keep_present_no_split_modules(model.get_base_model() if self._use_peft else model)
        if self.ref_model is not None:
            self.ref_model = prepare_reference(
                self.ref_model, self.accelerator, deepspeed=self.is_deepspeed_enabled, fsdp=self.is_fsdp_enabled
            )

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
        check_training_block(dataset, args.block_length, name)
        return dataset

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
        return max_over_processes(count, self.accelerator)

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

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        if self._time_of_last_log["eval"] is None:
            self._time_of_last_log["eval"] = time.perf_counter()
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
