"""What sharding needs of the trainer: gathered weights under ZeRO-3, FSDP2 wrapping of weight-sharing modules and of
the frozen reference, and the maximum of a count over processes (for forwards every rank must run)."""

from __future__ import annotations

import contextlib

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled


@contextlib.contextmanager
def gathered(params):
    """ZeRO-3 partitioned parameters whole for the block (writes on rank 0 are kept); a no-op otherwise."""
    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            yield
    else:
        yield


def keep_present_no_split_modules(model) -> None:
    """FSDP's transformer auto-wrap (accelerate) wraps the classes named in `_no_split_modules` and fails on any the
    model lacks (DiffusionGemma inherits Gemma4 layer names it replaces by its own; layers already sharded have FSDP
    classes). Keep the classes the model has."""
    names = getattr(model, "_no_split_modules", None)
    if names:
        present = {type(module).__name__ for module in model.modules()}
        model._no_split_modules = {name for name in names if name in present}


def shard_weight_sharing_groups(groups, accelerator) -> None:
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


def prepare_reference(ref_model, accelerator, *, deepspeed: bool, fsdp: bool):
    """The frozen reference wrapped like the policy: DeepSpeed and FSDP by TRL's helpers, else placed for eval."""
    if deepspeed:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(ref_model, accelerator)
    if fsdp:
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(ref_model, accelerator)
    return accelerator.prepare_model(ref_model, evaluation_mode=True)


def max_over_processes(count: int, accelerator) -> int:
    """The maximum of `count` over processes: a sharded model (ZeRO-3, FSDP) gathers its weights in every forward, so
    every rank must run as many (e.g. mean-field queries)."""
    if accelerator.num_processes > 1:
        count = int(accelerator.gather(torch.tensor([count], device=accelerator.device)).max())
    return count
