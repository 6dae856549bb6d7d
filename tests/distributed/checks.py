"""Scale-out checks, run by `tests/test_distributed.py` under `accelerate launch` (2 CPU processes, gloo).

    accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 2 --mixed_precision no \\
        tests/distributed/checks.py SPEC.json

SPEC.json: {"out": DIR, "cases": [CASE, ...], "collect": COLLECT or null}. Each CASE trains `DDOTrainer` a few steps
(`build_trainer`, the same function the test uses for its 1-process runs) and rank 0 writes `DIR/<name>.pt`: the
logged losses, the policy and reference weights as whole tensors, the reference's `requires_grad` flags, and the states
(state keys and `x_t`) every rank trained on. A CASE with `save_steps` is then resumed from that checkpoint by a fresh
trainer, whose results are written, with the uninterrupted run's under "uninterrupted". COLLECT runs a sharded trajectory collection that every process
interrupts after its first shard, then resumes it; rank 0 saves the dataset. `DIR/setup.json` says how the models were
actually wrapped (DDP, FSDP2 `fully_shard` with DTensor shards, DeepSpeed ZeRO stage).

accelerate only enables FSDP and DeepSpeed on accelerator devices, while torch's FSDP2 and DeepSpeed's CPU
accelerator run on CPU with gloo: `allow_sharding_on_cpu` lifts exactly those two gates (the backend and the
distributed type accelerate picks) and skips building DeepSpeed's optional shared-memory CPU allreduce kernel; the
sharding, the optimizer, the gradient reduction and our code are the real ones.
"""

from __future__ import annotations

import json
import os
import sys

import torch


# ------------------------------------------------------------------------------------------------ shared with the test
def make_rows(vocab_size: int, n: int = 8, prompt_length: int = 5, completion_length: int = 8, block_length: int = 4,
              seed: int = 0, identical: bool = False) -> list[dict]:  # fmt: skip
    """Synthetic trajectories (random tokens, a random decode order inside each block). Equal lengths: a bidirectional
    canvas padded to a longer batch sees more mask tokens, so only equal lengths give equal logits in any batching."""
    from trl_t3d.testing import synthetic_rows

    rows = synthetic_rows(vocab_size, n, completion_length, block_length, seed, prompt_lengths=(prompt_length,))
    return [rows[0]] * n if identical else rows


class StateRecorder:
    """Wraps the collator and keeps, per batch, the state keys and the states x_t it produced."""

    def __init__(self, collator):
        self.collator, self.batches = collator, []

    def __call__(self, features):
        batch = self.collator(features)
        keys = [int(f["state_key"]) for f in features]
        self.batches.append({"keys": keys, "xt": batch["xt"].tolist(), "loss_mask": batch["loss_mask"].tolist()})
        return batch


def build_trainer(case: dict, output_dir: str, per_device_train_batch_size: int):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from trl_t3d import DDOConfig, DDOTrainer

    tokenizer = AutoTokenizer.from_pretrained(case["model_dir"])
    args = DDOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_train_batch_size,
        max_steps=case.get("max_steps", 3),
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="steps" if case.get("save_steps") else "no",
        save_steps=case.get("save_steps") or 500,
        disable_tqdm=True,
        activation_checkpointing=False,
        seed=case.get("seed", 0),
        trust_remote_code=True,
        ref_sync_steps=case.get("ref_sync_steps", 0),
        mask_ratio_exponent=case.get("mask_ratio_exponent", 8.0),
        random_token_ratio=case.get("random_token_ratio", 0.1),
        reference_temperature=case.get("reference_temperature", 0.0),
        mean_field_temperature=case.get("mean_field_temperature", 0.0),
        recollect_each_round=bool(case.get("prompts")),
        generation_max_new_tokens=8,
        generation_block_length=4,
        generation_batch_size=2,
    )
    if case.get("prompts"):  # prompts only: the trainer collects, and recollects with the reference each round
        rows = [{"prompt": prompt} for prompt in case["prompts"]]
    else:
        rows = make_rows(len(tokenizer), **case.get("rows", {}))
    peft_config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False) if case.get("peft") else None
    trainer = DDOTrainer(
        case["model_dir"],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.data_collator = StateRecorder(trainer.data_collator)
    return trainer


def trained_weights(trainer) -> dict:
    """Losses, whole policy and reference weights, and the reference's requires_grad flags (every process calls)."""
    from trl_t3d.trainer.reference_state import full_tensors

    policy = trainer.accelerator.unwrap_model(trainer.model)
    reference = trainer._reference_parameters()
    return {
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "policy": full_tensors(list(policy.named_parameters())),
        "reference": full_tensors(reference),
        "reference_requires_grad": [p.requires_grad for _, p in reference],
    }


# ------------------------------------------------------------------------------------------------ launched side
def allow_sharding_on_cpu() -> None:
    """Let accelerate take its FSDP and DeepSpeed paths on CPU processes (see the module docstring)."""
    import accelerate.state as state
    from accelerate.utils import DistributedType

    if torch.cuda.is_available():
        return
    prepare_backend = state.PartialState._prepare_backend

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        # Launched processes without an accelerator: gloo on CPU, whatever `use_cpu` says (DeepSpeed requires it off).
        return prepare_backend(self, True, sagemaker_dp, backend)

    state.PartialState._prepare_backend = _prepare_backend
    accelerator_state_init = state.AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin  # accelerate: GPU types only
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate's own init

    state.AcceleratorState.__init__ = __init__
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # DeepSpeed's optional shared-memory allreduce for CPU is a C++ extension built at start (about 2 minutes);
        # without it DeepSpeed's collectives run on gloo.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def describe_setup(trainer) -> dict:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    policy = trainer.accelerator.unwrap_model(trainer.model)
    reference = trainer._reference_parameters()
    ds_plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    fsdp_plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    return {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "num_processes": trainer.accelerator.num_processes,
        "wrapped": type(trainer.model_wrapped).__name__,
        "fsdp_version": getattr(fsdp_plugin, "fsdp_version", None),
        "policy_fully_sharded": isinstance(trainer.model, FSDPModule),
        "policy_dtensor": any(isinstance(p, DTensor) for p in policy.parameters()),
        "reference_dtensor": bool(reference) and all(isinstance(p, DTensor) for _, p in reference),
        "zero_stage": ds_plugin.zero_stage if ds_plugin is not None else None,
        "zero3_partitioned": any(hasattr(p, "ds_id") for p in policy.parameters()),
    }


def run_case(case: dict, out: str, setup: dict) -> None:
    from accelerate.utils import gather_object

    saved_env = dict(os.environ)
    os.environ.update(case.get("env", {}))  # accelerate settings of this case (read when its Trainer starts)
    try:
        trainer = build_trainer(case, os.path.join(out, case["name"]), case.get("per_device_train_batch_size", 2))
    except ValueError as err:  # a refused setup: record the message
        if not case.get("expect_error"):
            raise
        setup[case["name"]] = {"error": str(err)}
        return
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    trainer.train()
    result = trained_weights(trainer)
    if case.get("save_steps"):  # resume from the checkpoint in a fresh trainer: the result is the resumed run's
        folder = os.path.join(out, case["name"], f"checkpoint-{case['save_steps']}")
        uninterrupted = result
        trainer = build_trainer(case, os.path.join(out, case["name"]), case.get("per_device_train_batch_size", 2))
        trainer.train(resume_from_checkpoint=folder)
        result = {**trained_weights(trainer), "uninterrupted": uninterrupted}
        result["checkpoint_files"] = sorted(os.listdir(folder))
    states = gather_object([(trainer.args.process_index, trainer.data_collator.batches)])
    setup[case["name"]] = describe_setup(trainer)
    if trainer.is_world_process_zero():
        result["states"] = dict(states)
        torch.save(result, os.path.join(out, f"{case['name']}.pt"))
    trainer.accelerator.wait_for_everyone()


class _Interrupted(Exception):
    pass


def run_collection(spec: dict, out: str) -> None:
    """Collect, stopping every process after its first shard is written; resume; rank 0 saves the dataset."""
    from accelerate import PartialState
    from datasets import Dataset

    from trl_t3d import collect
    from trl_t3d.generation import DiffusionGenerationConfig
    from trl_t3d.resolved import load_tokenizer
    from trl_t3d.scripts.utils import load_diffusion_model

    state = PartialState()
    model = load_diffusion_model(spec["model_dir"], trust_remote_code=True)
    tokenizer = load_tokenizer(spec["model_dir"], trust_remote_code=True)
    prompts = Dataset.from_dict({"prompt": spec["prompts"]})
    config = DiffusionGenerationConfig(**spec["generation"])
    kwargs = dict(output_dir=os.path.join(out, "shards"), shard_size=1, batch_size=2, show_progress=False, seed=0)
    write_shard, written = collect._write_shard, []

    def interrupting(rows, path):
        write_shard(rows, path)
        written.append(path)
        if len(written) == 1:
            raise _Interrupted

    collect._write_shard = interrupting
    try:
        collect.collect_trajectories(model, tokenizer, prompts, config, **kwargs)
    except _Interrupted:
        pass
    first = len(written)

    def counting(rows, path):
        write_shard(rows, path)
        written.append(path)

    collect._write_shard = counting
    dataset = collect.collect_trajectories(model, tokenizer, prompts, config, **kwargs)
    collect._write_shard = write_shard
    from accelerate.utils import gather_object

    counts = gather_object([(state.process_index, {"first": first, "resumed": len(written) - first})])
    if state.is_main_process:
        dataset.save_to_disk(os.path.join(out, "collected"))
        with open(os.path.join(out, "collect.json"), "w") as f:
            json.dump(dict(counts), f)
    state.wait_for_everyone()


def main(spec_path: str) -> None:
    allow_sharding_on_cpu()
    with open(spec_path) as f:
        spec = json.load(f)
    out, setup = spec["out"], {}
    for case in spec.get("cases", []):
        run_case(case, out, setup)
    if spec.get("collect"):
        run_collection(spec["collect"], out)
    from accelerate import PartialState

    if PartialState().is_main_process:
        with open(os.path.join(out, "setup.json"), "w") as f:
            json.dump(setup, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
