"""Saving and publishing the student: its decoding settings (`diffusion_generation_config.json`), the final weights in
the dtype the model was loaded in, checkpoints with the round state, the model card, and the push (checked first)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .rounds import REFERENCE_ADAPTER

logger = logging.getLogger(__name__)


class StudentSavingMixin:
    """`DDOTrainer`'s saving and publishing (see the module docstring)."""

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
        said = self.__dict__.setdefault("_said_about_student_decoding", set())

        def say_once(key, message):
            if key not in said:
                said.add(key)
                logger.warning(message)

        if not block:
            say_once("block", "No decoding block length in the trajectories nor `block_length`: the student's saved "
                     "decoding config says 4. Set `DDOConfig.block_length` to the block it should decode with.")  # fmt: skip
        block = int(block or 4)
        tokens_per_step = max(1, min(self.args.student_tokens_per_step, block))
        if tokens_per_step != self.args.student_tokens_per_step:
            say_once("tps", f"`student_tokens_per_step`={self.args.student_tokens_per_step} exceeds the block of "
                     f"{block}: the student's saved decoding config says {tokens_per_step} (one step per block).")  # fmt: skip
        max_new_tokens = meta.get("max_new_tokens")
        if max_new_tokens and int(max_new_tokens) % block:
            say_once("length", f"The trajectories' max_new_tokens={max_new_tokens} is not whole blocks of {block}: the "
                     "student's saved decoding config leaves max_new_tokens unset (the decoder's default).")  # fmt: skip
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
            pushing = self.__dict__.get("_pushing", False)
            if not _internal_call or pushing:
                self.create_model_card(output_dir=output_dir)
            if pushing:  # what `push_to_hub` uploads next must be a complete student (the same check as the CLI's)
                from ..hub import check_student_folder

                check_student_folder(output_dir)

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

    def _save(self, output_dir=None, state_dict=None):
        """The final save writes the dtype the model was loaded in; checkpoints keep the fp32 master weights."""
        if self._saved_dtype is not None and not self.__dict__.get("_saving_checkpoint"):
            if state_dict is None:
                state_dict = self.accelerator.unwrap_model(self.model).state_dict()
            state_dict = {k: v.to(self._saved_dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        return super()._save(output_dir, state_dict)

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
        self._save_round_state(checkpoint)

    def init_hf_repo(self, token=None, private=None):
        from ..hub import reaching_the_hub

        with reaching_the_hub(f"create the repository '{self.args.hub_model_id or Path(self.args.output_dir).name}'"):
            return super().init_hf_repo(token=token, private=private)

    def push_to_hub(self, *args, **kwargs):
        """Save the student (weights, tokenizer, decoding config, card) and upload it; an unreachable Hub is said so."""
        from ..hub import reaching_the_hub

        self._pushing = True
        try:
            with reaching_the_hub(f"push the student in {self.args.output_dir}"):
                return super().push_to_hub(*args, **kwargs)
        finally:
            self._pushing = False

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, output_dir=None, **kwargs):
        """README.md from TRL's card machinery: teacher, trajectory data, DDO settings, and a quick start that loads
        the student as saved (full model, or LoRA adapter on its base) with its recommended few-step decoding."""
        if not self.is_world_process_zero():
            return
        from ..hub import student_model_card, student_quick_start, student_training_details

        args, meta = self.args, self._trajectory_metadata
        output_dir = output_dir or args.output_dir
        teacher = self._teacher_id or meta.get("teacher") or "unknown"
        hub_teacher = teacher if teacher != "unknown" and not os.path.isdir(teacher) else None
        tags = sorted(set(self._tag_names) | ({tags} if isinstance(tags, str) else set(tags or [])))
        gen = self._student_generation_settings()
        dataset_name = dataset_name or meta.get("dataset_name")
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
        training_details = student_training_details(
            teacher=teacher,
            family=self.adapter.name,
            is_adapter=self._use_peft,
            dataset_name=dataset_name,
            stats=self.__dict__.get("_dataset_stats", {}).get("train", {}),
            teacher_decoding=meta.get("generation_config", {}),
            objective=self._objective_summary(),
            preset=args.preset,
            mask_ratios=args.mask_ratios,
            mask_ratio_exponent=args.mask_ratio_exponent,
            random_token_ratio=args.random_token_ratio,
            global_step=self.state.global_step,
            learning_rate=args.learning_rate,
            ref_sync_steps=args.ref_sync_steps,
            block_length=gen["block_length"],
            tokens_per_step=gen["tokens_per_step"],
        )
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
            reference_adapter=REFERENCE_ADAPTER if self._use_peft and self._reference_adapter_saved() else None,
        )
        os.makedirs(output_dir, exist_ok=True)
        card.save(os.path.join(output_dir, "README.md"))
