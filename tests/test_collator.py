"""States x_t built from step maps are states the decoder actually visited; the collator batches them faithfully."""

import math

import pytest
import torch

from trl_t3d import testing
from trl_t3d.trainer.collator import DDODataCollator, decode_ranks, mask_ratio_probabilities, sample_trace_state

MASK, PAD = 2, 0


def _semi_ar_decode(model, prompt, length, block_length, tokens_per_step):
    """A minimal LLaDA-style decoder (greedy, low-confidence remasking) that records the canvas before each forward."""
    canvas = torch.full((length,), MASK)
    step_map = torch.full((length,), -1)
    canvases, step = [], 0
    for start in range(0, length, block_length):
        block = torch.arange(start, min(start + block_length, length))
        while bool((canvas[block] == MASK).any()):
            canvases.append(canvas.clone())
            with torch.no_grad():
                logits = model(input_ids=torch.cat([prompt, canvas])[None]).logits[0, len(prompt) :]
            probs = logits.softmax(-1)
            conf, pred = probs.max(-1)
            open_ = torch.zeros(length, dtype=torch.bool)
            open_[block] = canvas[block] == MASK
            conf = conf.masked_fill(~open_, -1)
            chosen = conf.topk(min(tokens_per_step, int(open_.sum()))).indices
            canvas[chosen], step_map[chosen] = pred[chosen], step
            step += 1
    return canvas, step_map, canvases


@pytest.mark.parametrize("tokens_per_step", [1, 2])
def test_state_is_a_canvas_the_decoder_visited(tokens_per_step):
    tok = testing.make_tokenizer()
    model = testing.make_generic_mlm(tok)
    prompt = torch.tensor(tok("12+30=", add_special_tokens=False)["input_ids"])
    block_length, length = 4, 12
    completion, step_map, canvases = _semi_ar_decode(model, prompt, length, block_length, tokens_per_step)
    visited = [c == MASK for c in canvases]
    gen = torch.Generator().manual_seed(0)
    seen_blocks = set()
    for ratio in (1.0, 0.75, 0.5, 0.25):
        for _ in range(6):
            noise, loss, rank = sample_trace_state(step_map, block_length, ratio, generator=gen)
            assert any(torch.equal(noise, v) for v in visited), "x_t is not a state of the decoder's trajectory"
            block = int(loss.nonzero()[0]) // block_length
            seen_blocks.add(block)
            inside = torch.arange(length) // block_length == block
            assert bool((loss == (noise & inside)).all())
            assert not bool(noise[: block * block_length].any())  # earlier blocks clean
            assert bool(noise[(block + 1) * block_length :].all())  # later blocks masked
            # The masked tokens of the block are the ones decoded last: at least ceil(r * n), ties kept together.
            n_masked = int(loss.sum())
            assert n_masked >= math.ceil(ratio * block_length)
            assert n_masked - math.ceil(ratio * block_length) < tokens_per_step
            if int((~loss & inside).sum()):
                assert step_map[loss].min() > step_map[~loss & inside].max()
    assert seen_blocks == {0, 1, 2}


def test_all_blocks_state_masks_each_block_by_its_own_order():
    step_map = torch.tensor([2, 0, 3, 1, 7, 6, 5, 4, 9, 8])  # blocks of 4, the last one partial
    noise, loss, rank = sample_trace_state(step_map, 4, 0.5, all_blocks=True)
    assert noise.tolist() == [True, False, True, False, True, True, False, False, True, False]
    assert torch.equal(noise, loss)
    assert rank.tolist() == [2, 0, 3, 1, 3, 2, 1, 0, 1, 0]
    noise, _, _ = sample_trace_state(step_map, 4, 1.0, all_blocks=True)
    assert bool(noise.all())
    noise, _, _ = sample_trace_state(step_map, 4, 0.25, all_blocks=True)
    assert noise.tolist() == [False, False, True, False, True, False, False, False, True, False]


def test_decode_ranks_and_ratio_probabilities():
    assert decode_ranks(torch.tensor([5, 5, 4, 9, 8]), 2).tolist() == [0, 1, 0, 1, 0]
    probs = mask_ratio_probabilities([1.0, 0.75, 0.5, 0.25], 8.0)
    torch.testing.assert_close(
        probs, torch.tensor([0.906, 0.0907, 0.00354, 0.0000138], dtype=torch.float64), atol=5e-4, rtol=0
    )
    with pytest.raises(ValueError, match="mask_ratios"):
        mask_ratio_probabilities([1.5], 8.0)


def _features():
    return [
        {
            "prompt_ids": [10, 11, 12],
            "completion_ids": [20, 21, 22, 23, 24, 1],
            "step_map": [1, 0, 3, 2, 4, 5],
            "block_length": 4,
        },
        {"prompt_ids": [13], "completion_ids": [30, 31, 32, 1], "step_map": [3, 2, 1, 0], "block_length": 4},
    ]


def test_collator_pads_and_masks():
    collator = DDODataCollator(pad_token_id=PAD, mask_token_id=MASK, mask_ratios=[1.0], random_token_ratio=0.0, seed=1)
    batch = collator(_features())
    assert batch["prompt_ids"].tolist() == [[10, 11, 12], [PAD, PAD, 13]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["x0"].tolist() == [[20, 21, 22, 23, 24, 1], [30, 31, 32, 1, PAD, PAD]]
    assert batch["completion_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    xt, loss = batch["xt"], batch["loss_mask"]
    assert bool((xt[loss] == MASK).all()) and bool((xt[1, 4:] == MASK).all())  # padding = undecoded canvas
    assert not bool(loss[1, 4:].any())
    assert batch["block_length"].tolist() == [4, 4]
    again = DDODataCollator(pad_token_id=PAD, mask_token_id=MASK, mask_ratios=[1.0], random_token_ratio=0.0, seed=1)
    assert all(torch.equal(batch[k], again(_features())[k]) for k in batch)


def test_collator_batch_equals_two_single_batches():
    make = lambda: DDODataCollator(pad_token_id=PAD, mask_token_id=MASK, random_token_ratio=0.3, vocab_size=50, seed=4)  # noqa: E731
    feats = [_features()[0], {**_features()[0], "completion_ids": [40, 41, 42, 43, 44, 1]}]
    both, c = make()(feats), make()
    first, second = c(feats[:1]), c(feats[1:])
    for key in ("xt", "loss_mask", "decode_rank"):
        assert torch.equal(both[key], torch.cat([first[key], second[key]]))


def test_random_tokens_cover_a_share_of_the_masked_set():
    collator = DDODataCollator(
        pad_token_id=PAD,
        mask_token_id=MASK,
        block_causal=True,
        mask_ratios=[1.0],
        random_token_ratio=0.25,
        vocab_size=50,
    )
    feats = [
        {"prompt_ids": [10], "completion_ids": list(range(20, 36)), "step_map": list(range(16)), "block_length": 4}
    ]
    batch = collator(feats)
    loss, xt = batch["loss_mask"][0], batch["xt"][0]
    assert int(loss.sum()) == 16  # block-causal: every block trained at once, the loss covers random tokens too
    assert int((xt != MASK).sum()) == 4
    feats[0]["completion_ids"], feats[0]["step_map"] = [20, 21], [0, 1]
    assert int((collator(feats)["xt"][0] != MASK).sum()) == 1  # at least one per example


def test_uniform_noise_and_bad_settings():
    collator = DDODataCollator(pad_token_id=PAD, noise="uniform", vocab_size=50, mask_ratios=[1.0], block_causal=True)
    batch = collator(_features()[:1])
    assert batch["loss_mask"].all() and not bool((batch["xt"] == MASK).all())
    with pytest.raises(ValueError, match="pad_token_id == mask_token_id"):
        DDODataCollator(pad_token_id=MASK, mask_token_id=MASK)
    with pytest.raises(ValueError, match="vocab_size"):
        DDODataCollator(pad_token_id=PAD, mask_token_id=MASK, random_token_ratio=0.1)
    with pytest.raises(ValueError, match="different block lengths"):
        DDODataCollator(pad_token_id=PAD, mask_token_id=MASK)([_features()[0], {**_features()[1], "block_length": 2}])


# ---------------------------------------------------------------------------------------------- trailing EOS (post_num)
EOS = 1


def test_capped_trailing_eos_by_hand():
    from trl_t3d.trainer.collator import capped_trailing_eos

    completion = [10, 11, EOS, EOS, EOS, EOS, PAD, EOS]  # the first EOS ends the answer; the rest is padding
    assert capped_trailing_eos(completion, [EOS, PAD], 2).tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert capped_trailing_eos(completion, [EOS, PAD], 0).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert not capped_trailing_eos(completion, [EOS, PAD], None).any()
    assert not capped_trailing_eos([10, 11, 12], [EOS, PAD], 0).any()  # no EOS: nothing is padding


def _padded_trajectory(content=5, length=16, block_length=4, seed=0):
    """A bidirectional canvas: `content` tokens, then EOS to the end; semi-AR step map, random order per block."""
    g = torch.Generator().manual_seed(seed)
    completion = [20 + i for i in range(content)] + [EOS] * (length - content)
    steps = []
    for start in range(0, length, block_length):
        steps += [start + int(p) for p in torch.randperm(block_length, generator=g)]
    return completion, steps


def test_no_forward_on_a_block_of_pure_trailing_eos():
    from trl_t3d.trainer.collator import capped_trailing_eos

    completion, steps = _padded_trajectory()  # blocks 2 and 3 (positions 8..15) are EOS past the first two
    untrained = capped_trailing_eos(completion, [EOS, PAD], 2)
    assert untrained.tolist() == [False] * 8 + [True] * 8
    gen = torch.Generator().manual_seed(0)
    chosen = set()
    for ratio in (1.0, 0.75, 0.5, 0.25):
        for _ in range(25):
            noise, loss, _ = sample_trace_state(steps, 4, ratio, generator=gen, untrained=untrained)
            assert loss.any() and not (loss & untrained).any()
            chosen.add(int(loss.nonzero()[0]) // 4)
            assert noise[8:].all()  # the visited canvas still has the later blocks masked: same state as decoding
    assert chosen == {0, 1}
    # block-causal families train every block at once; the capped padding leaves the loss there too
    noise, loss, _ = sample_trace_state(steps, 4, 1.0, all_blocks=True, untrained=untrained)
    assert noise.all() and loss.tolist() == [True] * 8 + [False] * 8


def test_nothing_untrained_draws_the_same_states():
    """Without trailing EOS the cap changes no draw: states stay reproducible across the change."""
    _, steps = _padded_trajectory(content=16)
    for seed in range(5):
        a = sample_trace_state(steps, 4, 0.5, generator=torch.Generator().manual_seed(seed))
        b = sample_trace_state(
            steps, 4, 0.5, generator=torch.Generator().manual_seed(seed), untrained=torch.zeros(16, dtype=torch.bool)
        )
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_collator_caps_trailing_eos_like_t3d_post_num():
    completion, steps = _padded_trajectory()
    feature = {"prompt_ids": [5, 6], "completion_ids": completion, "step_map": steps, "block_length": 4}
    capped = DDODataCollator(pad_token_id=PAD, mask_token_id=MASK, eos_token_ids=[EOS], max_trailing_eos_tokens=2)
    uncapped = DDODataCollator(pad_token_id=PAD, mask_token_id=MASK, eos_token_ids=[EOS])
    capped_loss = torch.stack([capped([feature])["loss_mask"][0] for _ in range(40)])
    uncapped_loss = torch.stack([uncapped([feature])["loss_mask"][0] for _ in range(40)])
    assert not capped_loss[:, 8:].any() and capped_loss.any(-1).all()
    assert uncapped_loss[:, 8:].any()  # before: forwards spent on blocks of nothing but padding
    with pytest.raises(ValueError, match="max_trailing_eos_tokens"):
        DDODataCollator(pad_token_id=PAD, mask_token_id=MASK, max_trailing_eos_tokens=-1)
