"""The reference of multi-round self-play in checkpoints, whatever the sharding (DDP, FSDP2, DeepSpeed ZeRO-3).

After a sync the reference is the policy of the last round boundary. A checkpoint taken at a boundary holds it (the
policy's own weights); one taken between boundaries does not, so its reference is saved beside it as full tensors and
loaded back into the (possibly sharded) reference when the run resumes.
"""

from __future__ import annotations

import os

import torch

from .distributed import gathered

REFERENCE_WEIGHTS_NAME = "t3d_reference.safetensors"


def _is_dtensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@torch.no_grad()
def full_tensors(named_params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """CPU copies of the whole parameters. A collective under FSDP2 / ZeRO-3: every process must call it."""
    params = [p for _, p in named_params]
    out = {}
    with gathered(params):
        for name, param in named_params:
            tensor = param.data.full_tensor() if _is_dtensor(param.data) else param.data
            out[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


@torch.no_grad()
def assign_full_tensors(named_params: list[tuple[str, torch.nn.Parameter]], tensors: dict[str, torch.Tensor]) -> None:
    """Write whole tensors into (possibly sharded) parameters. Every process calls it with the same tensors."""
    names = [name for name, _ in named_params]
    if sorted(names) != sorted(tensors):
        missing, unexpected = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
        raise ValueError(
            f"The saved reference does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            "Resume with the model and PEFT settings of the interrupted run."
        )
    params = [p for _, p in named_params]
    with gathered(params):
        for name, param in named_params:
            value = tensors[name]
            if _is_dtensor(param.data):
                from torch.distributed.tensor import distribute_tensor

                target = param.data
                value = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements)
                param.data.copy_(value)
            else:
                param.data.copy_(value.to(param.device, param.dtype))


def save_reference(named_params, directory: str, is_main_process: bool) -> None:
    from safetensors.torch import save_file

    tensors = full_tensors(named_params)
    if is_main_process:
        os.makedirs(directory, exist_ok=True)
        save_file(tensors, os.path.join(directory, REFERENCE_WEIGHTS_NAME))


def load_reference(named_params, directory: str) -> bool:
    """Load a saved reference into `named_params`; False when the checkpoint has none."""
    path = os.path.join(directory, REFERENCE_WEIGHTS_NAME)
    if not os.path.isfile(path):
        return False
    from safetensors.torch import load_file

    assign_full_tensors(named_params, load_file(path))
    return True
