"""LLaDA2's own block decoding (LLaDA2.0) and token editing (LLaDA2.1), batched, token for token as the originals.

The published samplers (`dllm/pipelines/llada2/sampler.py`, `dllm/pipelines/llada21/sampler.py`, and each model's
`generate`) differ from trl_t3d's generic decoder (`diffusion_generate`) in three ways this module keeps:

1. **Blocks are aligned to absolute positions**: block k covers positions `[k*B, (k+1)*B)` counted from the prompt's
   first token, so the first completion block is shared with the prompt's tail (its first `P % B` positions are
   prompt) and the canvas runs to the next multiple of B after `P + max_new_tokens` (the positions past
   `max_new_tokens` are decoded too, and then dropped). `diffusion_generate` counts blocks from the completion start.
2. **Their commit rules**: LLaDA2.0 commits, per step, every masked position whose probability exceeds `threshold`
   when there are at least as many as the step's quota (`block // steps`, remainder first), else the quota's most
   confident ones. LLaDA2.1 commits with a fixed quota (`num_to_transfer`) and *edits*: a placed, non-prompt token of
   the block is replaced when the model gives another token probability above `editing_threshold`; once the block has
   no mask left it keeps refining for up to `max_post_steps` forwards, and moves on when a forward edits nothing.
3. The originals take one prompt (LLaDA2.1) or equal-length prompts without padding (LLaDA2.0). Here each row of a
   left-padded batch follows its own blocks, steps and edits, and gets the tokens it would get alone: rows are
   forwarded together, each under its own block-causal mask and positions (pads are hidden keys).

Differences, by design: the mask token is never predicted (its logit is -inf before the softmax; the originals allow
it, and LLaDA2.1's loop then never ends because a committed mask is still a mask); `max_forwards` bounds a row's
forward passes (LLaDA2.1's editing has no bound of its own while edits keep changing tokens). With `stop_at_eos`, a
row stops after the block in which its generated part is fully decoded and contains an EOS (the models' `generate`
rule); the positions after its first EOS become `pad_token_id`.

Trajectories: `step_map[i, j]` is the row's own forward index (0-based) at which completion token j was last written,
and `edit_counts[i, j]` how many times it was rewritten after its first commit (LLaDA2.1 editing; always 0 for
LLaDA2.0). A trajectory with edits is not one T3D's states describe (a state masks the tokens decoded *after* a step;
an edited token was decoded twice), so `collect_trajectories` refuses editing (see `trl_t3d.adapters.llada2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput


@dataclass
class LLaDA2GenerateOutput(ModelOutput):
    """What `llada2_generate` returns with `return_dict=True`.

    Args:
        sequences (`(B, P + max_new_tokens)`): the left-padded prompts and their completions.
        step_map (`(B, max_new_tokens)`): the row's forward index at which each completion token was last written;
            -1 where never decoded (after an EOS stop).
        edit_counts (`(B, max_new_tokens)`): rewrites of each token after its first commit (LLaDA2.1 editing).
        nfe (`(B,)`): forward passes each row took (what it would take alone).
        histories (`list` of `(forwards, T)` tensors, *optional*): with `output_history=True`, each row's canvas (from
            its first prompt token to the end of its last block) after each of its forwards.
    """

    sequences: torch.LongTensor | None = None
    step_map: torch.LongTensor | None = None
    edit_counts: torch.LongTensor | None = None
    nfe: torch.LongTensor | None = None
    histories: list | None = None


def even_transfer_schedule(block_length: int, steps: int) -> list[int]:
    """`block_length` tokens over `steps` steps, the remainder on the first steps (both originals' schedule)."""
    if steps <= 0:
        return []
    base, remainder = divmod(block_length, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, sorted_indices, remove), float("-inf"))
    return logits


def sample_tokens(logits, temperature: float, top_k=None, top_p=None, generator=None):
    """Tokens and their probabilities: argmax of the softmax at temperature 0, else a draw from the filtered one."""
    if temperature == 0.0:
        probs = F.softmax(logits, dim=-1)
        tokens = probs.argmax(dim=-1)
        return tokens, probs.gather(-1, tokens[..., None])[..., 0]
    probs = F.softmax(_filter_logits(logits / temperature, top_k, top_p), dim=-1)
    tokens = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])
    return tokens, probs.gather(-1, tokens[..., None])[..., 0]


def commit_masked(probs, active, quota: int, threshold: float) -> torch.Tensor:
    """Both originals' rule for one row: every active position above `threshold` when they reach the quota, else the
    `min(quota, active)` most confident active ones."""
    confidence = torch.where(active, probs, torch.full_like(probs, float("-inf")))
    high = (confidence > threshold) & active
    if int(high.sum()) >= quota:
        return high
    transfer = torch.zeros_like(active)
    available = int(active.sum())
    if quota > 0 and available > 0:
        transfer[torch.topk(confidence, k=min(quota, available)).indices] = True
    return transfer


def block_causal_mask(absolute: torch.Tensor, block_length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive `(B, 1, T, T)` mask from absolute positions (-1 and below: padding): a real query sees the real keys
    of its own and earlier absolute blocks; a pad query sees itself (its output is never read)."""
    real = absolute >= 0
    blocks = torch.div(absolute, block_length, rounding_mode="floor")
    allowed = (blocks[:, None, :] <= blocks[:, :, None]) & real[:, None, :] & real[:, :, None]
    allowed |= torch.eye(absolute.shape[1], dtype=torch.bool, device=absolute.device)[None] & ~real[:, :, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=absolute.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


@torch.no_grad()
def llada2_generate(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    *,
    mask_token_id: int,
    max_new_tokens: int = 128,
    block_length: int = 32,
    steps: int = 32,
    threshold: float = 0.95,
    minimal_topk: int = 1,
    editing_threshold: float | None = None,
    max_post_steps: int = 16,
    num_to_transfer: int = 1,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eos: bool = False,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    max_forwards: int | None = None,
    generator: torch.Generator | None = None,
    return_dict: bool = False,
    output_history: bool = False,
):
    """Decode left-padded prompts with LLaDA2.0's rule (`editing_threshold=None`) or LLaDA2.1's (editing on).

    Args:
        model: a LLaDA2 model (`LLaDA2MoeModelLM`, or anything taking a 4D additive mask and `position_ids`).
        input_ids (`(B, P)`), attention_mask (`(B, P)`, *optional*): left-padded prompts.
        mask_token_id (`int`): LLaDA2's `<|mask|>` (156895 in the published tokenizer).
        max_new_tokens, block_length (LLaDA2: 32), threshold: as the originals (`gen_length`, `block_length`).
        steps, minimal_topk: LLaDA2.0's steps per block, capped at `max_new_tokens // minimal_topk`.
        editing_threshold, max_post_steps, num_to_transfer: LLaDA2.1's editing (None: LLaDA2.0's rule).
        temperature, top_k, top_p, generator: sampling (0: greedy, the originals' default).
        stop_at_eos, eos_token_id, pad_token_id: the models' `generate` EOS rule (off in the published samplers).
        max_forwards (`int`, *optional*): bound on each row's forwards (default: `16 * (blocks + 1) * block_length`).
        return_dict (`bool`): return `LLaDA2GenerateOutput` (trajectory included) instead of the sequences.
        output_history (`bool`): record each row's canvas after each of its forwards (tests, debugging).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"`input_ids` must be (batch, prompt_length), got {tuple(input_ids.shape)}.")
    device, (batch, prompt_width) = input_ids.device, input_ids.shape
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    if bool((valid[:, :-1] & ~valid[:, 1:]).any()):
        raise ValueError("LLaDA2 decoding needs left-padded prompts: `tokenizer.padding_side = 'left'`.")
    if bool(((input_ids == mask_token_id) & valid).any()):
        raise ValueError(f"A prompt contains the mask token (id {mask_token_id}).")
    if block_length <= 0 or max_new_tokens <= 0:
        raise ValueError("`block_length` and `max_new_tokens` must be positive.")
    editing = editing_threshold is not None
    if not editing:
        steps = min(steps, max_new_tokens // minimal_topk) if minimal_topk > 0 else steps
        schedule = even_transfer_schedule(block_length, steps)
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    if stop_at_eos and not eos_ids:
        raise ValueError("`stop_at_eos=True` needs `eos_token_id`.")

    # 1. The canvas: each row's real prompt ends at column `prompt_width`; its blocks run over absolute positions.
    lengths = valid.sum(-1)
    pads = prompt_width - lengths
    ends = torch.div(lengths + max_new_tokens + block_length - 1, block_length, rounding_mode="floor") * block_length
    width = prompt_width + int((ends - lengths).max())
    canvas = torch.full((batch, width), mask_token_id, dtype=torch.long, device=device)
    canvas[:, :prompt_width] = input_ids
    absolute = torch.arange(width, device=device)[None, :] - pads[:, None]
    absolute = torch.where(absolute >= 0, absolute, torch.full_like(absolute, -block_length))
    position_ids = absolute.clamp(min=0)
    written = torch.full((batch, width), -1, dtype=torch.long, device=device)
    edits = torch.zeros((batch, width), dtype=torch.long, device=device)
    block = [int(n) // block_length for n in lengths.tolist()]
    last_block = [int(e) // block_length for e in ends.tolist()]
    step = [0] * batch
    post = [0] * batch
    done = [False] * batch
    nfe = [0] * batch
    histories = [[] for _ in range(batch)] if output_history else None
    limit = max_forwards if max_forwards is not None else 16 * (max(last_block) + 1) * block_length
    dtype = next(model.parameters()).dtype if any(True for _ in model.parameters()) else torch.float32

    def window(i):
        start = int(pads[i]) + block[i] * block_length
        return start, start + block_length

    def finish_block(i):
        """Move row i to its next block (or end it), applying the EOS rule after the block."""
        if stop_at_eos:
            start = prompt_width
            _, end = window(i)
            generated = canvas[i, start:end]
            is_eos = torch.isin(generated, torch.tensor(eos_ids, device=device))
            if bool(is_eos.any()) and not bool((generated == mask_token_id).any()):
                first = start + int(is_eos.nonzero()[0, 0])
                fill = pad_token_id if pad_token_id is not None else eos_ids[0]
                canvas[i, first + 1 :] = fill
                written[i, first + 1 :] = -1
                done[i] = True
                return
        block[i] += 1
        step[i] = post[i] = 0
        if block[i] >= last_block[i]:
            done[i] = True

    def needs_forward(i) -> bool:
        """Advance row i past finished blocks; whether its current block needs a forward."""
        while not done[i]:
            start, end = window(i)
            active = canvas[i, start:end] == mask_token_id
            if editing:
                if not bool(active.any()) and post[i] + 1 > max_post_steps:
                    finish_block(i)
                    continue
                return True
            if not bool(active.any()) or step[i] >= len(schedule):
                finish_block(i)
                continue
            return True
        return False

    # 2. Every row with work left runs one forward per round, under its own block-causal mask.
    while True:
        rows = [i for i in range(batch) if needs_forward(i)]
        if not rows:
            break
        index = torch.tensor(rows, device=device)
        span = max(window(i)[1] for i in rows)
        logits = model(
            input_ids=canvas[index, :span],
            attention_mask=block_causal_mask(absolute[index, :span], block_length, dtype),
            position_ids=position_ids[index, :span],
            use_cache=False,
        ).logits
        for r, i in enumerate(rows):
            start, end = window(i)
            block_logits = logits[r, start:end].float()
            block_logits[..., mask_token_id] = float("-inf")  # the mask is noise, never a prediction
            tokens, probs = sample_tokens(block_logits, temperature, top_k, top_p, generator)
            current = canvas[i, start:end]
            active = current == mask_token_id
            if editing:
                if not bool(active.any()):
                    post[i] += 1
                transfer = commit_masked(probs, active, num_to_transfer, threshold)
                editable = ~active & (absolute[i, start:end] >= int(lengths[i]))  # placed, not prompt
                edit = (probs > editing_threshold) & editable & (tokens != current)
            else:
                transfer = commit_masked(probs, active, schedule[step[i]], threshold)
                edit = torch.zeros_like(transfer)
            changed = transfer | edit
            canvas[i, start:end] = torch.where(changed, tokens, current)
            written[i, start:end] = torch.where(changed, nfe[i], written[i, start:end])
            edits[i, start:end] += edit.long()
            nfe[i] += 1
            step[i] += 1
            if histories is not None:
                histories[i].append(canvas[i, int(pads[i]) : int(pads[i]) + int(ends[i])].clone())
            if editing and not bool(active.any()) and not bool(edit.any()):
                finish_block(i)
            if nfe[i] >= limit and not done[i]:
                raise RuntimeError(
                    f"Row {i} took {nfe[i]} forwards without finishing (LLaDA2.1 edits kept changing tokens); raise "
                    "`max_forwards` or `editing_threshold`."
                )

    # 3. Outputs: the completion up to `max_new_tokens` (positions decoded past it are dropped, as the originals do).
    sequences = canvas[:, : prompt_width + max_new_tokens]
    if not return_dict:
        return sequences
    return LLaDA2GenerateOutput(
        sequences=sequences,
        step_map=written[:, prompt_width : prompt_width + max_new_tokens],
        edit_counts=edits[:, prompt_width : prompt_width + max_new_tokens],
        nfe=torch.tensor(nfe, device=device),
        histories=[torch.stack(h) if h else None for h in histories] if histories is not None else None,
    )


__all__ = ["LLaDA2GenerateOutput", "even_transfer_schedule", "llada2_generate"]
