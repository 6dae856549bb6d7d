"""Fast-dLLM-class decoding: prefix / dual KV cache, Fast-dLLM's threshold and factor rules, Dream's schedule.

Golden parity with Fast-dLLM's and Dream's original decoders on the native classes lives at the end of this file.
"""

import json
import os

import pytest
import torch

from trl_t3d import DiffusionGenerationConfig, diffusion_generate
from trl_t3d.generation.cache import DiffusionKVCache
from trl_t3d.generation.schedules import (
    BlockSchedule,
    dream_commit_counts,
    dream_transfer_probability,
    factor_commit_counts,
    origin_commits,
)
from trl_t3d.testing import make_generic_mlm, make_tokenizer

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
PROMPTS = ["12+34=", "perm:dacb", "hello, world"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def confident_model(tok, num_layers, seed=0):
    """A tiny bidirectional Llama with a sharpened head: confidences spread over (0, 1), so thresholds decide."""
    model = make_generic_mlm(tok, hidden_size=64, num_layers=num_layers, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(60.0)
    return model


def decode(model, tok, prompts, **kwargs):
    batch = tok(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    settings = dict(max_new_tokens=16, return_dict_in_generate=True, output_step_map=True, stop_at_eos=False)
    settings.update(kwargs)
    return diffusion_generate(model, batch.input_ids, batch.attention_mask, processing_class=tok, **settings)


SETTINGS = [
    dict(block_length=4),
    dict(block_length=8, tokens_per_step=2),
    dict(block_length=8, threshold=0.6),
    dict(block_length=8, threshold=0.6, threshold_rule="fast_dllm"),
    dict(block_length=8, factor=1.0),
]


# ---------------------------------------------------------------------------------------------- the cache itself
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_first_forward_of_each_block_is_exact_and_later_ones_run_the_window(tok, mode):
    """The block's first forward runs the whole sequence exactly as without cache; later ones only the window, whose
    logits differ from the exact ones (stale keys/values: the cache is approximate in a model of two layers)."""
    model = confident_model(tok, num_layers=2)
    states, calls = [], []
    hook = model.register_forward_hook(lambda m, a, kw, out: calls.append((kw, out.logits)), with_kwargs=True)
    try:
        out = decode(
            model, tok, PROMPTS[:2], block_length=4, cache=mode, step_callback=lambda s, c, u: states.append(c)
        )
    finally:
        hook.remove()
    prompt_length = out.sequences.shape[1] - 16
    assert len(calls) == len(states) == out.nfe == 16
    for step, ((kwargs, logits), canvas) in enumerate(zip(calls, states)):
        start = prompt_length + 4 * (step // 4)
        exact = decode_logits(model, tok, PROMPTS[:2], canvas)
        if step % 4 == 0:
            assert kwargs["input_ids"].shape[1] == prompt_length + 16
            assert torch.equal(logits, exact), f"step {step}"
        else:
            window_end = prompt_length + 16 if mode == "prefix" else start + 4
            assert kwargs["input_ids"].shape[1] == window_end - start
            assert isinstance(kwargs["cache"], DiffusionKVCache)
            assert not torch.allclose(logits[:, :4], exact[:, start : start + 4], atol=1e-4), f"step {step}"


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_refresh_interval_reruns_the_whole_sequence_every_n_forwards(tok, mode):
    """Interval 2 in blocks of 4 at one token per step: forwards 0 and 2 of each block are full and exact, 1 and 3
    run the window; interval 1 is exact decoding, token for token."""
    model = confident_model(tok, num_layers=2)
    widths = []
    hook = model.register_forward_hook(lambda m, a, kw, out: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        out = decode(model, tok, PROMPTS[:2], block_length=4, cache=mode, cache_refresh_interval=2)
    finally:
        hook.remove()
    full = out.sequences.shape[1]
    assert [w == full for w in widths] == [True, False] * 8
    exact = decode(model, tok, PROMPTS, block_length=8, tokens_per_step=2)
    every_forward = decode(
        model, tok, PROMPTS, block_length=8, tokens_per_step=2, cache=mode, cache_refresh_interval=1
    )
    assert torch.equal(every_forward.sequences, exact.sequences)
    assert torch.equal(every_forward.step_map, exact.step_map)


def stale_reference_logits(model, sequence, first_sequence, stale_positions):
    """An independent reference for the cached steps of a multi-layer Llama: a full forward of `sequence` in which
    the keys/values of `stale_positions` (every layer) are those of a forward of `first_sequence`, injected by hooks on
    the k/v projections (RoPE comes after them, at unchanged positions)."""
    recorded, hooks = {}, []
    projections = [
        (i, name, getattr(layer.self_attn, name))
        for i, layer in enumerate(model.model.layers)
        for name in ("k_proj", "v_proj")
    ]
    for i, name, module in projections:
        hooks.append(module.register_forward_hook(lambda m, a, out, key=(i, name): recorded.update({key: out})))
    with torch.no_grad():
        model(first_sequence)
    for hook in hooks:
        hook.remove()

    def replace(m, a, out, key):
        out = out.clone()
        out[:, stale_positions] = recorded[key][:, stale_positions]
        return out

    hooks = [
        module.register_forward_hook(lambda m, a, out, key=(i, name): replace(m, a, out, key))
        for i, name, module in projections
    ]
    try:
        with torch.no_grad():
            return model(sequence).logits
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_steps_equal_a_forward_with_stale_keys_and_values(tok, mode):
    """What a cached step computes, in a model of three layers: the exact forward of the current state, except that
    the keys/values before the block (prefix), or before and after it (dual), are those of the block's first forward."""
    model = confident_model(tok, num_layers=3)
    prompt = torch.tensor([tok(PROMPTS[0], add_special_tokens=False).input_ids])
    states, calls = [], []
    hook = model.register_forward_hook(lambda m, a, kw, out: calls.append(out.logits), with_kwargs=True)
    try:
        decode(model, tok, [PROMPTS[0]], block_length=4, cache=mode, step_callback=lambda s, c, u: states.append(c))
    finally:
        hook.remove()
    length = prompt.shape[1]
    for step in range(16):
        start = length + 4 * (step // 4)
        if step % 4 == 0:
            continue
        first = torch.cat([prompt, states[4 * (step // 4)]], 1)
        stale = list(range(start)) + (list(range(start + 4, length + 16)) if mode == "dual" else [])
        reference = stale_reference_logits(model, torch.cat([prompt, states[step]], 1), first, stale)
        torch.testing.assert_close(calls[step][:, :4], reference[:, start : start + 4], rtol=0, atol=1e-5)


def decode_logits(model, tok, prompts, canvas):
    from trl_t3d.adapters import get_adapter

    batch = tok(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    mask = torch.cat([batch.attention_mask, torch.ones_like(canvas)], dim=1)
    kwargs = get_adapter(model, tokenizer=tok).forward_kwargs(torch.cat([batch.input_ids, canvas], 1), mask)
    with torch.no_grad():
        return model(**kwargs).logits


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_one_layer_cache_is_exact(tok, settings):
    """In a one-layer model, keys/values depend only on each position's own token, so a cache whose tokens did not
    change is exact: any wrong position, mask or window would change the tokens or the step map."""
    model = confident_model(tok, num_layers=1)
    exact = decode(model, tok, PROMPTS, **settings)
    if "threshold" in settings or "factor" in settings:  # the rule commits several tokens at some steps, not all
        assert 2 < exact.nfe < 16
    for mode in ("prefix", "dual"):
        cached = decode(model, tok, PROMPTS, cache=mode, **settings)
        assert torch.equal(cached.sequences, exact.sequences), mode
        assert torch.equal(cached.step_map, exact.step_map), mode
        assert cached.nfe == exact.nfe


@pytest.mark.parametrize("mode", ["none", "prefix", "dual"])
def test_padded_batch_equals_one_by_one(tok, mode):
    """Prompts of different lengths decoded together (left padding, per-row EOS stop, threshold) give row for row the
    tokens and step maps of decoding each alone."""
    model = confident_model(tok, num_layers=2, seed=1)
    eos = tok.eos_token_id
    with torch.no_grad():  # EOS wherever this model would write token 67: two rows stop early, at different places
        model.lm_head.weight[eos] = model.lm_head.weight[67] * 1.05
    settings = dict(block_length=4, threshold=0.7, cache=mode, stop_at_eos=True)
    together = decode(model, tok, PROMPTS, **settings)
    completion = together.sequences[:, -16:]
    stopped = (completion == tok.pad_token_id).any(-1)
    assert stopped.any() and not stopped.all(), "the EOS path is not exercised"
    for row, prompt in enumerate(PROMPTS):
        alone = decode(model, tok, [prompt], **settings)
        assert torch.equal(alone.sequences[0, -16:], completion[row]), (mode, row)
        assert torch.equal(commit_order(alone.step_map[0]), commit_order(together.step_map[row])), (mode, row)


def commit_order(step_map):
    """Step indices count the batch's forwards; which tokens were committed together, and in which order, is the
    row's own trajectory: the dense rank of its steps (-1 stays -1)."""
    ranks = torch.unique(step_map[step_map >= 0], return_inverse=True)[1]
    return step_map.masked_scatter(step_map >= 0, ranks)


# ---------------------------------------------------------------------------------------------- commit rules by hand
def test_factor_rule_by_hand():
    confidence = torch.tensor([[0.9, 0.6, 0.8, 0.3], [0.4, 0.2, 0.1, 0.05], [0.99, 0.98, 0.97, 0.96]])
    undecided = torch.tensor([[True] * 4, [True] * 4, [True, True, False, True]])
    # factor 1, thresholds by rank r = 1..4: (always), 1 - 1/3, 1 - 1/4, 1 - 1/5
    # row 0 sorted 0.9, 0.8 (>= .667), 0.6 (< .75) -> 2; row 1: only the first; row 2: 3 undecided, all pass -> 3
    assert factor_commit_counts(confidence, undecided, 1.0).tolist() == [2, 1, 3]
    # factor 2: thresholds (always), 1/3, 1/2, 3/5 -> row 0: 0.9 0.8 0.6 pass, 0.3 fails
    assert factor_commit_counts(confidence, undecided, 2.0).tolist() == [3, 1, 3]


def test_dream_schedule_by_hand():
    # linspace(1, 1e-3, 5) = 1, .75025, .5005, .25075, .001; counts int(n * (1 - s/t)), the rest at the last step
    counts, left = [], torch.tensor([8])
    for step in range(4):
        c = int(dream_commit_counts(left, step, 4, 1e-3))
        counts.append(c)
        left = left - c
    assert counts == [1, 2, 2, 3]  # 8*.24975=1.998, 7*.33289=2.33, 5*.49900=2.495, 3
    assert DiffusionGenerationConfig(max_new_tokens=8, schedule="dream", steps=4).block_schedule() == [1, 2, 2, 3]
    assert int(dream_commit_counts(torch.tensor([8]), 0, 8, 1e-3)) == 0  # 8 * .124875: Dream's first step is empty
    assert float(dream_transfer_probability(0, 4, 1e-3)) == pytest.approx(0.24975, abs=1e-6)
    assert dream_transfer_probability(3, 4, 1e-3) == 1.0


def test_origin_draws_one_uniform_per_undecided_position_in_row_major_order():
    undecided = torch.tensor([[True, False, True], [True, True, False]])
    draws = torch.rand(4, generator=torch.Generator().manual_seed(3))  # the positions (0,0) (0,2) (1,0) (1,1)
    commit = origin_commits(undecided, 0.5, torch.Generator().manual_seed(3))
    expected = torch.zeros_like(undecided)
    expected[0, 0], expected[0, 2], expected[1, 0], expected[1, 1] = (draws < 0.5).tolist()
    assert torch.equal(commit, expected)
    assert origin_commits(undecided, 1.0).equal(undecided)


def test_fast_dllm_rule_has_no_schedule():
    config = DiffusionGenerationConfig(max_new_tokens=8, block_length=4, threshold=0.9, threshold_rule="fast_dllm")
    schedule = BlockSchedule(config, 4)
    assert schedule.num_steps == 4 and schedule.counts(0, torch.ones(2, 4, dtype=torch.bool)).tolist() == [1, 1]
    ours = DiffusionGenerationConfig(max_new_tokens=8, block_length=4, threshold=0.9, tokens_per_step=2)
    assert BlockSchedule(ours, 4).counts(0, torch.ones(1, 4, dtype=torch.bool)).tolist() == [2]


def test_dream_schedule_skips_empty_steps(tok):
    model = confident_model(tok, num_layers=1)
    out = decode(model, tok, PROMPTS[:1], schedule="dream", steps=16)  # one block of 16, 16 steps
    assert (out.step_map[0] >= 0).all()
    assert out.nfe < 16  # steps whose Dream count is 0 run no forward


# ---------------------------------------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cache="full"), "`cache`='full' is unknown"),
        (dict(schedule="cosine"), "`schedule`='cosine' is unknown"),
        (dict(threshold_rule="greedy", threshold=0.9), "`threshold_rule`='greedy' is unknown"),
        (dict(threshold_rule="fast_dllm"), "neither is set"),
        (dict(threshold_rule="fast_dllm", threshold=0.9, tokens_per_step=2), "no scheduled count"),
        (dict(threshold=0.9, factor=1.0), "Keep one of them"),
        (dict(factor=0.0), "`factor` must be > 0"),
        (dict(factor=1.0, remasking="random"), "`factor` compares the model's confidence"),
        (dict(remasking="origin"), "set schedule='dream'"),
        (dict(schedule="dream", eps=1.5), "`eps` must be in"),
        (dict(cache="dual", cache_refresh_interval=0), "`cache_refresh_interval` must be a positive int"),
        (dict(cache_refresh_interval=2), "cache='none' decodes exactly already"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionGenerationConfig(max_new_tokens=8, block_length=4, **kwargs)


def test_settings_roundtrip(tmp_path):
    config = DiffusionGenerationConfig(
        max_new_tokens=8,
        cache="dual",
        cache_refresh_interval=2,
        threshold=0.9,
        threshold_rule="fast_dllm",
        schedule="dream",
        eps=0.01,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "diffusion_generation_config.json").read_text())
    assert {k: saved[k] for k in ("cache", "threshold_rule", "schedule", "eps")} == {
        "cache": "dual",
        "threshold_rule": "fast_dllm",
        "schedule": "dream",
        "eps": 0.01,
    }
    loaded = DiffusionGenerationConfig.from_pretrained(tmp_path)
    assert (loaded.cache, loaded.threshold_rule, loaded.schedule, loaded.eps) == ("dual", "fast_dllm", "dream", 0.01)
    assert loaded.cache_refresh_interval == saved["cache_refresh_interval"] == 2


class WithoutCacheArgument(torch.nn.Module):
    """A bidirectional model whose forward takes no KV cache (as remote code written for exact decoding)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_families_without_the_cache_say_so(tok, sdar_dir):
    from transformers import AutoModelForCausalLM

    prompt = torch.tensor([tok("12+", add_special_tokens=False).input_ids])
    sdar = AutoModelForCausalLM.from_pretrained(sdar_dir, trust_remote_code=True)
    with pytest.raises(ValueError, match="cached exactly already"):
        diffusion_generate(sdar, prompt, adapter="sdar", max_new_tokens=8, block_length=4, cache="dual")
    plain = WithoutCacheArgument(confident_model(tok, num_layers=1))
    with pytest.raises(ValueError, match="needs a model whose forward takes a KV cache"):
        diffusion_generate(plain, prompt, processing_class=tok, max_new_tokens=8, block_length=4, cache="prefix")
    exact = diffusion_generate(
        plain, prompt, processing_class=tok, max_new_tokens=8, block_length=4, cache="prefix", use_cache=False
    )
    assert exact.shape == (1, prompt.shape[1] + 8)


# ---------------------------------------------------------------------------------------------- golden: Fast-dLLM
def golden_cases(folder: str, name: str) -> list[dict]:
    """The recorded calls of a golden folder (every argument of every case)."""
    with open(os.path.join(folder, name)) as f:
        return json.load(f)["cases"]


FAST_DLLM = os.path.join(GOLDEN, "fastdllm")
FAST_DLLM_METHODS = {"generate": "none", "generate_with_prefix_cache": "prefix", "generate_with_dual_cache": "dual"}


def fast_dllm_cases():
    return golden_cases(FAST_DLLM, "cases.json")


@pytest.fixture(scope="module")
def fast_dllm_model():
    from trl_t3d import AutoModelForDiffusionLM

    return AutoModelForDiffusionLM.from_pretrained(FAST_DLLM)


@pytest.mark.parametrize("case", fast_dllm_cases(), ids=lambda c: c["name"])
def test_parity_with_fast_dllm(fast_dllm_model, case):
    """Native LLaDA + cache="none" | "prefix" | "dual" give the tokens of Fast-dLLM's `generate`,
    `generate_with_prefix_cache` and `generate_with_dual_cache` (tests/golden/gen_fastdllm.py), for each prompt alone
    and for all prompts of a case in one left-padded batch (Fast-dLLM itself decodes one prompt at a time)."""
    from safetensors.torch import load_file

    golden = load_file(os.path.join(FAST_DLLM, "golden.safetensors"))
    name, pad = case["name"], fast_dllm_model.config.pad_token_id
    prompts = [golden[f"{name}/{row}/prompt"][0] for row in range(case["num_prompts"])]
    settings = dict(max_new_tokens=case["gen_length"], block_length=case["block_length"], stop_at_eos=False)
    if case["threshold"] is None:
        settings["steps"] = case["steps"]
    else:  # Fast-dLLM's own rule: the most confident token and every one >= threshold, no scheduled count
        settings.update(threshold=case["threshold"], threshold_rule="fast_dllm")
    width = max(len(p) for p in prompts)
    batch = torch.stack([torch.cat([torch.full((width - len(p),), pad), p]) for p in prompts])
    attention_mask = torch.stack([torch.arange(width) >= width - len(p) for p in prompts]).long()
    for method, mode in FAST_DLLM_METHODS.items():
        together = diffusion_generate(
            fast_dllm_model, batch, attention_mask, cache=mode, return_dict_in_generate=True, **settings
        )
        for row, prompt in enumerate(prompts):
            want = golden[f"{name}/{row}/{method}/sequences"]
            alone = diffusion_generate(
                fast_dllm_model, prompt[None], cache=mode, return_dict_in_generate=True, **settings
            )
            assert torch.equal(alone.sequences, want), (method, row)
            assert torch.equal(together.sequences[row, width:], want[0, len(prompt) :]), (method, row, "batched")
            their_nfe = int(golden[f"{name}/{row}/{method}/nfe"])
            if mode == "none" or case["threshold"] is None:
                assert alone.nfe == their_nfe, (method, row)
            else:  # Fast-dLLM's cached loops run one more (idle) forward when a block's first forward finishes it
                assert alone.nfe <= their_nfe, (method, row)


# ---------------------------------------------------------------------------------------------- golden: Fast-dLLM Dream
FAST_DLLM_DREAM = os.path.join(GOLDEN, "fastdllm_dream")


def fast_dllm_dream_cases():
    return golden_cases(FAST_DLLM_DREAM, "cases.json")


@pytest.fixture(scope="module")
def fast_dllm_dream_model():
    from trl_t3d import AutoModelForDiffusionLM

    return AutoModelForDiffusionLM.from_pretrained(FAST_DLLM_DREAM)


def fast_dllm_dream_decode(model, prompts, attention_mask, mode, gen_length, block_length, steps, threshold, eps):
    """Fast-dLLM's Dream block decoding (`dream/model/generation_utils_block.py`), written with trl_t3d's pieces:
    the Dream adapter's forward arguments (left padding: key mask and cumulative positions) and logit shift,
    `DiffusionKVCache` windows cut as `BidirectionalCacheSession` cuts them, and the commit rules of `sampling` /
    `schedules`. It is not `diffusion_generate`'s policy, which differs by design in two places:

    - the whole-sequence forward that starts a block commits only the block's FIRST position (greedy, from its exact
      shifted logit); `diffusion_generate` commits by confidence (threshold / schedule) over the whole block there;
    - the cached windows start AT the block (that position is decided, so the query before it, whose logit predicts
      it, is not needed); `diffusion_generate` starts them one position earlier for Dream, since its block's first
      position may still be undecided, which also recomputes that position's keys/values at every step.
    """
    from trl_t3d.adapters import get_adapter
    from trl_t3d.generation.decode import _window_kwargs
    from trl_t3d.generation.sampling import propose_tokens, select_commits

    adapter = get_adapter(model)
    mask_id, (batch, width) = adapter.mask_token_id, prompts.shape
    canvas = torch.full((batch, gen_length), mask_id)
    undecided = torch.ones(batch, gen_length, dtype=torch.bool)
    full_mask = None if attention_mask is None else torch.cat([attention_mask, torch.ones_like(canvas)], 1)
    steps_per_block = steps // (gen_length // block_length)

    def logits_of(cache, window=None):
        kwargs = adapter.forward_kwargs(torch.cat([prompts, canvas], 1), full_mask)
        if window is not None:
            cache.set_window(*window)
            kwargs = _window_kwargs(kwargs, *window)
        kwargs.update(cache=cache, use_cache=True)
        with torch.no_grad():
            return adapter.align_logits(model(**kwargs).logits)

    for start in range(0, gen_length, block_length):
        end = start + block_length
        cache = DiffusionKVCache(mode)
        x0, _ = propose_tokens(logits_of(cache)[:, width + start], "low_confidence", never_ids=(mask_id,))
        canvas[:, start], undecided[:, start] = x0, False
        window = (width + start, width + (gen_length if mode == "prefix" else end))
        step = 1
        while bool(undecided[:, start:end].any()):
            assert threshold is not None or step < steps_per_block, "Fast-dLLM would leave masks in this block"
            logits, block_undecided = logits_of(cache, window)[:, :block_length], undecided[:, start:end]
            if threshold is not None:  # confidence_threshold: the most probable position and every one >= threshold
                x0, confidence = propose_tokens(logits, "low_confidence", never_ids=(mask_id,))
                counts = torch.ones(batch, dtype=torch.long)
            else:  # any other alg: negative entropy, Dream's counts for steps 1 .. steps_per_block - 1
                x0, confidence = propose_tokens(logits, "entropy", never_ids=(mask_id,))
                counts = dream_commit_counts(block_undecided.sum(-1), step, steps_per_block, eps)
                step += 1
            commit = select_commits(confidence, block_undecided, counts, threshold)
            canvas[:, start:end] = torch.where(commit, x0, canvas[:, start:end])
            undecided[:, start:end] &= ~commit
    return torch.cat([prompts, canvas], 1)


@pytest.mark.parametrize("case", fast_dllm_dream_cases(), ids=lambda c: c["name"])
def test_parity_with_fast_dllm_dream(fast_dllm_dream_model, case):
    """Native Dream + `DiffusionKVCache` ("prefix" / "dual") give the tokens of Fast-dLLM's Dream block decoder
    (`diffusion_generate` of its generation_utils_block.py, tests/golden/gen_fastdllm_dream.py) when driven by its
    policy (`fast_dllm_dream_decode`), for each prompt alone and for all prompts of a case in one left-padded batch
    (Fast-dLLM itself decodes one unpadded prompt at a time)."""
    from safetensors.torch import load_file

    golden = load_file(os.path.join(FAST_DLLM_DREAM, "golden.safetensors"))
    name, pad = case["name"], fast_dllm_dream_model.config.pad_token_id
    prompts = [golden[f"{name}/{row}/prompt"][0] for row in range(case["num_prompts"])]
    settings = {k: case[k] for k in ("gen_length", "block_length", "steps", "threshold", "eps")}
    width = max(len(p) for p in prompts)
    batch = torch.stack([torch.cat([torch.full((width - len(p),), pad), p]) for p in prompts])
    attention_mask = torch.stack([torch.arange(width) >= width - len(p) for p in prompts]).long()
    for mode in case["modes"]:
        together = fast_dllm_dream_decode(fast_dllm_dream_model, batch, attention_mask, mode, **settings)
        for row, prompt in enumerate(prompts):
            want = golden[f"{name}/{row}/{mode}/sequences"]
            alone = fast_dllm_dream_decode(fast_dllm_dream_model, prompt[None], None, mode, **settings)
            assert torch.equal(alone, want), (mode, row)
            assert torch.equal(together[row, width:], want[0, len(prompt) :]), (mode, row, "batched")


# ---------------------------------------------------------------------------------------------- golden: Dream
DREAM = os.path.join(GOLDEN, "dream")
DREAM_ALGORITHMS = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}


def dream_cases():
    return golden_cases(DREAM, "generate_cases.json")


@pytest.fixture(scope="module")
def dream_golden():
    from safetensors.torch import load_file

    from trl_t3d import AutoModelForDiffusionLM

    return AutoModelForDiffusionLM.from_pretrained(DREAM), load_file(os.path.join(DREAM, "golden.safetensors"))


@pytest.mark.parametrize("case", dream_cases(), ids=lambda c: c["name"])
def test_parity_with_dream_diffusion_generate(dream_golden, case):
    """`schedule="dream"` gives the tokens of Dream's own `diffusion_generate` (tests/golden/gen_dream.py), and commits
    them in the same order: the step at which each token appears in Dream's history, up to the steps that commit
    nothing (Dream runs their forward, we skip it)."""
    model, golden = dream_golden
    settings = case["generation_config"]
    attention_mask = golden[case["attention_mask"]] if case["attention_mask"] else None
    out = diffusion_generate(
        model,
        golden[case["input_ids"]],
        attention_mask,
        max_new_tokens=settings["max_new_tokens"],
        steps=settings["steps"],
        schedule="dream",
        eps=settings["eps"],
        remasking=DREAM_ALGORITHMS[settings["alg"]],
        mask_token_id=settings["mask_token_id"],
        stop_at_eos=False,  # Dream decodes the whole canvas
        return_dict_in_generate=True,
        output_step_map=True,
    )
    assert torch.equal(out.sequences, golden[case["sequences"]])
    history = golden[case["history"]][..., -settings["max_new_tokens"] :]  # (steps, B, L): the canvas after each step
    dream_steps = (history != settings["mask_token_id"]).long().argmax(0)  # first step at which a position is decided
    for row in range(out.sequences.shape[0]):
        assert torch.equal(commit_order(out.step_map[row]), commit_order(dream_steps[row]))


def test_dream_cache_is_exact_with_one_layer():
    """Dream's logits are shifted (position i - 1 predicts token i), so a cached window starts one position before
    the block; with one layer the cache is exact, so any off-by-one would change tokens."""
    from trl_t3d.models.dream import DreamConfig, DreamModel

    config = DreamConfig.from_pretrained(DREAM)
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    model = DreamModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    prompts = torch.randint(0, 288, (3, 7), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(prompts)
    prompts[0, :3], attention_mask[0, :3] = 300, 0
    prompts[1, :1], attention_mask[1, :1] = 300, 0
    for settings in (dict(block_length=4), dict(schedule="dream", steps=6), dict(block_length=8, threshold=0.3)):
        kwargs = dict(max_new_tokens=16, stop_at_eos=False, return_dict_in_generate=True, output_step_map=True)
        exact = diffusion_generate(model, prompts, attention_mask, **kwargs, **settings)
        for mode in ("prefix", "dual"):
            cached = diffusion_generate(model, prompts, attention_mask, cache=mode, **kwargs, **settings)
            assert torch.equal(cached.sequences, exact.sequences), (mode, settings)
            assert torch.equal(cached.step_map, exact.step_map), (mode, settings)


# ---------------------------------------------------------------------------------------------- collection and CLI
def test_collect_with_the_teacher_cache(tok):
    """A cached teacher's trajectories are its cached decoding of each prompt (batched as alone), and say so."""
    import datasets

    from trl_t3d.collect import collect_trajectories, cut_after_eos
    from trl_t3d.trajectories import dataset_metadata

    model = confident_model(tok, num_layers=2)
    config = DiffusionGenerationConfig(max_new_tokens=8, block_length=4, mask_token_id=tok.mask_token_id, cache="dual")
    prompts = datasets.Dataset.from_dict({"prompt": ["1+1=", "What is 12*3?", "x"]})
    trajectories = collect_trajectories(
        model, tok, prompts, config, batch_size=3, apply_chat_template=False, show_progress=False
    )
    assert dataset_metadata(trajectories)["generation_config"]["cache"] == "dual"
    for row in trajectories:
        alone = diffusion_generate(
            model,
            torch.tensor([row["prompt_ids"]]),
            generation_config=config,
            processing_class=tok,
            return_dict_in_generate=True,
            output_step_map=True,
        )
        completion, step_map = cut_after_eos(
            alone.sequences[0, -8:].tolist(), alone.step_map[0].tolist(), [tok.eos_token_id]
        )[:2]
        assert (row["completion_ids"], row["step_map"]) == (completion, step_map)


def test_cli_and_configs_carry_the_cache():
    from trl_t3d import DDOConfig
    from trl_t3d.scripts import collect, evaluate
    from trl_t3d.scripts.utils import make_generation_config

    _, _, decoding = collect.make_parser().parse_args_and_config(
        args=["--output_dir", "out", "--cache", "prefix", "--threshold", "0.9", "--threshold_rule", "fast_dllm"]
    )
    config = make_generation_config(**decoding.generation_kwargs())
    assert (config.cache, config.threshold, config.threshold_rule) == ("prefix", 0.9, "fast_dllm")
    _, _, decoding = collect.make_parser().parse_args_and_config(args=["--schedule", "dream", "--steps", "64"])
    assert make_generation_config(**decoding.generation_kwargs()).schedule == "dream"
    eval_args = evaluate.make_parser().parse_args_and_config(args=["--task", "arithmetic", "--cache", "dual"])[0]
    assert eval_args.cache == "dual"
    ddo = DDOConfig(output_dir="out", generation_cache="dual", student_cache="prefix", report_to=[])
    assert ddo.teacher_generation_settings()["cache"] == "dual"
    with pytest.raises(ValueError, match="`student_cache` must be"):
        DDOConfig(output_dir="out", student_cache="full", report_to=[])


def test_cache_through_a_peft_model(tok):
    """A LoRA student (PeftModel: its forward takes **kwargs) decodes with the cache of its base model."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(confident_model(tok, num_layers=1), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    exact = decode(model, tok, PROMPTS, block_length=4)
    cached = decode(model, tok, PROMPTS, block_length=4, cache="dual")
    assert torch.equal(cached.sequences, exact.sequences)


def test_trainer_refuses_a_cache_the_family_cannot_take(sdar_dir, tmp_path):
    from transformers import AutoTokenizer

    from trl_t3d import AutoModelForDiffusionLM, DDOConfig, DDOTrainer

    model = AutoModelForDiffusionLM.from_pretrained(sdar_dir)
    args = DDOConfig(output_dir=str(tmp_path), student_cache="dual", report_to=[], use_cpu=True)
    import datasets

    trajectories = datasets.Dataset.from_dict(
        {
            "prompt_ids": [[5, 6, 7]],
            "completion_ids": [[8, 9, 10, 11]],
            "step_map": [[0, 1, 2, 3]],
            "block_length": [4],
        }
    )
    with pytest.raises(ValueError, match="the 'sdar' family does not take it. Set student_cache='none'"):
        DDOTrainer(
            model, args=args, train_dataset=trajectories, processing_class=AutoTokenizer.from_pretrained(sdar_dir)
        )
