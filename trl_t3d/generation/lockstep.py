"""Equal numbers of forwards on every process, for decoding through a sharded model.

Under FSDP or ZeRO-3 every forward of a sharded model is a collective (each rank all-gathers the weights it lacks), so
all ranks must run the same number of forwards. Decoding does not: ranks hold different numbers of prompts, and EOS
stop and threshold rules end their loops at different times. `lockstep_forwards` pairs the forwards up: before every
real forward a rank says "working" in an all-reduce; a rank that has finished keeps answering "idle" and runs a
replay of its last forward (output discarded, without KV cache) while any other rank is still working, so the k-th
forward of every rank gathers the same weights. A model whose forwards skip whole sharded modules depending on their
inputs (DiffusionGemma's cached encoder) is beyond this pairing.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


@contextlib.contextmanager
def lockstep_forwards(module: torch.nn.Module, enabled: bool = True, dummy_forward=None):
    """Inside the context every top-level forward of `module` is paired across ranks; leaving it waits (replaying a
    forward) until every rank has left. `dummy_forward()` (runs one forward of `module`) serves a rank that ran no
    forward at all, e.g. one that held no prompts.
    A no-op without an initialized process group or with `enabled=False`."""
    if not enabled or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        yield
        return
    device = next(module.parameters()).device
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    state = {"inputs": None, "replaying": False}

    def working(value: int) -> int:
        flag = torch.tensor([value], device=backend_device)
        dist.all_reduce(flag)
        return int(flag.item())

    def before_forward(_module, args, kwargs):
        if not state["replaying"]:
            # a replay runs every layer on the same inputs, without the cache (whose state the real forward advanced)
            if "past_key_values" in kwargs:
                kwargs = {k: v for k, v in kwargs.items() if k != "past_key_values"} | {"use_cache": False}
            state["inputs"] = (args, kwargs)
            working(1)

    # prepended: the pairing all-reduce runs before FSDP's own pre-forward all-gather
    handle = module.register_forward_pre_hook(before_forward, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        state["replaying"] = True
        try:
            while working(0):
                with torch.no_grad():
                    if state["inputs"] is not None:
                        module(*state["inputs"][0], **state["inputs"][1])
                    else:
                        dummy_forward()
        finally:
            handle.remove()


def one_block_forward(model, adapter, block_length: int) -> None:
    """One forward of a one-token prompt and one noised block: what a rank without prompts runs while others decode."""
    device = next(model.parameters()).device
    prompt = torch.full((1, 1), adapter.pad_token_id or 0, dtype=torch.long, device=device)
    canvas = torch.full((1, block_length), adapter.mask_token_id or 0, dtype=torch.long, device=device)
    clean = canvas if adapter.block_causal else None
    adapter.completion_logits(model, prompt, torch.ones_like(prompt), canvas, clean, block_length=block_length)
