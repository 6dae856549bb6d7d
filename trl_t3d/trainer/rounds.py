"""The reference model and multi-round self-play: the frozen copy (or the PEFT "ref" adapter / disabled adapters),
syncing it to the policy every `ref_sync_steps`, fresh trajectories each round (served from the state key where the
round starts; decoded in lockstep under a sharded reference), and an exact resume of all of it from a checkpoint.

`ReferenceRoundsMixin` holds the trainer's methods of this concern; `DDOSyncRefModelCallback` triggers them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import use_adapter

from .distributed import gathered
from .model_setup import is_quantized
from .randomness import ROUND_KEY, KeyedRows
from .reference_state import load_reference, save_reference

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"  # TRL's name (DPOTrainer) for the frozen copy of a trained adapter
ROUNDS_FILE = "t3d_rounds.json"


@contextlib.contextmanager
def without_dropout(module):
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

    def __init__(self, trainer):
        super().__init__(ref_model=trainer.ref_model, accelerator=trainer.accelerator)
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._restore_reference()

    def on_step_end(self, args, state, control, **kwargs):
        if args.ref_sync_steps and state.global_step % args.ref_sync_steps == 0:
            self.trainer.sync_reference()
            if args.recollect_each_round and self.trainer._prompt_dataset is not None:
                self.trainer._recollect()


class ReferenceRoundsMixin:
    """`DDOTrainer`'s reference and rounds (see the module docstring)."""

    # -------------------------------------------------------------------------------------- the reference
    @staticmethod
    def _frozen_copy(model, args):
        """A frozen reference equal to the policy. Under ZeRO-3 the weights are partitioned: gather before copying."""
        if is_quantized(model):
            raise ValueError(
                "A quantized model can only be trained with PEFT (QLoRA): pass a `peft_config`, whose disabled "
                "adapters then serve as the reference."
            )
        if is_deepspeed_zero3_enabled():
            # `_from_config` builds under zero.Init and initializes the partitioned weights the ZeRO-3 way (a plain
            # constructor runs `_init_weights` on empty shards and fails).
            ref = type(model)._from_config(copy.deepcopy(model.config), dtype=model.dtype)
            with gathered(list(model.parameters()) + list(ref.parameters())):
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
        with use_adapter(unwrapped, name), without_dropout(unwrapped):
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
        with gathered([p for pair in pairs for p in pair]):
            for dst, src in pairs:
                dst.requires_grad_(False)
                dst.data.copy_(src.data)

    # -------------------------------------------------------------------------------------- self-collection and rounds
    def _collect(self, model, processing_class, prompts, args, lockstep: bool = False, cache_dir: str | None = None):
        """The teacher's trajectories of `prompts` through the one collection path: with `cache_dir`, resumable and
        reused by a rerun of the same collection (`collect_or_reuse`); without (a new round), in memory."""
        from ..collect import collect_or_reuse, collect_trajectories

        if not getattr(model, "hf_device_map", None) and not is_quantized(model):
            model.to(args.device)  # decode where training will run, not on the CPU the model was loaded to
        was_training = model.training
        model.eval()
        collection = dict(
            batch_size=args.generation_batch_size,
            teacher_name=self._teacher_id,
            seed=args.seed,
            lockstep=lockstep,
        )
        teacher = dataclasses.replace(self.diffusion_lm, model=model)  # the current teacher, same ids and renderer
        decoding = args.teacher_generation_config(self.adapter.mask_token_id)
        try:
            if cache_dir is not None:
                return collect_or_reuse(teacher, None, prompts, decoding, cache_dir=cache_dir, **collection)
            return collect_trajectories(teacher, None, prompts, decoding, **collection)
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

    def _save_round_state(self, checkpoint: str) -> None:
        """Beside a checkpoint: the reference when it is an earlier policy, and where the current round's rows begin."""
        if self._reference_lags_policy(self.state.global_step):
            save_reference(self._reference_parameters(), checkpoint, self.is_world_process_zero())
        if self.__dict__.get("_round_starts") and self.is_world_process_zero():
            with open(os.path.join(checkpoint, ROUNDS_FILE), "w") as f:
                json.dump({"round_starts": self._round_starts}, f)

    # -------------------------------------------------------------------------------------- resuming
    def _reference_lags_policy(self, step: int) -> bool:
        """Whether, at `step`, the reference is the policy of an earlier round boundary (not the teacher, not now)."""
        k = self.args.ref_sync_steps
        return self.args.reads_reference() and k > 0 and step > k and step % k != 0

    def _reference_adapter_saved(self) -> bool:
        """Whether the policy holds the "ref" adapter, which PEFT saves beside the student (in `ref/`)."""
        policy = self.accelerator.unwrap_model(self.model)
        return REFERENCE_ADAPTER in getattr(policy, "peft_config", {})

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
