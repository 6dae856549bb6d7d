"""Decoding: parity with LLaDA's reference algorithm, exact cache, trajectory replay, EOS, streamers, bad input."""

import copy
import json
import os
import types
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

import trl_t3d
from trl_t3d import (
    AutoModelForDiffusionLM,
    DiffusionGenerationConfig,
    DiffusionLMGenerationMixin,
    add_diffusion_generation,
    diffusion_generate,
    testing,
)
from trl_t3d.adapters import DreamAdapter, GenericMaskedLMAdapter
from trl_t3d.generation.sampling import commit_schedule, propose_tokens, select_commits

MASK, EOS, PAD = 2, 1, 0


# ---------------------------------------------------------------------------------------------- oracle
def llada_reference(model, prompt, steps, gen_length, block_length, mask_id):
    """Our own rewrite of ML-GSAI/LLaDA `generate` (temperature 0, low_confidence, batch 1, no CFG).

    Full-sequence forward at every step; per block an equal split of the commits over its steps, remainder first;
    the most probable token's softmax probability (float64) is the confidence; beyond the block it is -inf.
    """
    prompt_length = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id, dtype=torch.long)], dim=1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for b in range(num_blocks):
        lo, hi = prompt_length + b * block_length, prompt_length + (b + 1) * block_length
        masked_in_block = int((x[0, lo:hi] == mask_id).sum())
        counts = [masked_in_block // per_block + int(i < masked_in_block % per_block) for i in range(per_block)]
        for count in counts:
            is_mask = x[0] == mask_id
            logits = model(x).logits[0].double()
            prediction = logits.exp().argmax(-1)  # Gumbel-max at temperature 0: exp(l) / (-log u)^0
            probability = torch.softmax(logits, -1).gather(-1, prediction[:, None])[:, 0]
            probability[hi:] = float("-inf")
            score = torch.where(is_mask, probability, torch.tensor(float("-inf"), dtype=torch.float64))
            chosen = torch.topk(score, count).indices
            x[0, chosen] = prediction[chosen]
    return x


@pytest.fixture(scope="module")
def generic(generic_dir):
    return AutoModelForCausalLM.from_pretrained(generic_dir).eval()


@pytest.fixture(scope="module")
def llada(llada_dir):
    return AutoModel.from_pretrained(llada_dir).eval()  # the native class, no remote code


@pytest.fixture(scope="module")
def sdar(sdar_dir):
    return AutoModelForCausalLM.from_pretrained(sdar_dir).eval()  # the native class, no remote code


SETTINGS = [(16, 4, 8), (16, 16, 5), (24, 8, 9), (12, 4, 12), (12, 12, 12)]  # (gen_length, block_length, steps)


@pytest.mark.parametrize("family", ["generic", "llada"])
@pytest.mark.parametrize("gen_length,block_length,steps", SETTINGS)
def test_parity_with_llada_reference(request, tokenizer, family, gen_length, block_length, steps):
    model = request.getfixturevalue(family)
    prompt = torch.tensor([tokenizer("12+34=", add_special_tokens=False)["input_ids"]])
    expected = llada_reference(model, prompt, steps, gen_length, block_length, tokenizer.mask_token_id)
    ours = diffusion_generate(
        model, prompt, max_new_tokens=gen_length, block_length=block_length, steps=steps, stop_at_eos=False
    )
    assert torch.equal(ours, expected)


def test_commit_schedule_by_hand():
    assert commit_schedule(16, 5) == [4, 3, 3, 3, 3]  # LLaDA: remainder on the first steps
    assert commit_schedule(8, 3) == [3, 3, 2]
    assert commit_schedule(10, 3, tokens_per_step=4) == [4, 4, 2]
    assert commit_schedule(4, 4) == [1, 1, 1, 1]


def test_select_commits_by_hand():
    confidence = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.2, 0.3, 0.95, 0.1]])
    undecided = torch.tensor([[True, False, True, True], [True, True, True, True]])
    commit = select_commits(confidence, undecided, torch.tensor([1, 2]))
    assert commit.tolist() == [[False, False, False, True], [False, True, True, False]]
    commit = select_commits(confidence, undecided, torch.tensor([1, 1]), threshold=0.15)
    assert commit.tolist() == [[False, False, True, True], [True, True, True, False]]
    commit = select_commits(confidence, undecided, torch.tensor([1, 1]), threshold=0.99)  # at least one per row
    assert commit.sum(-1).tolist() == [1, 1]


# ---------------------------------------------------------------------------------------------- cache
def test_cache_matches_no_cache_on_sdar(sdar, tokenizer):
    batch = tokenizer(["12+34=", "ab"], return_tensors="pt", padding=True, add_special_tokens=False)
    calls = []
    hook = sdar.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        results = {}
        for use_cache in (True, False):
            calls.clear()
            out = diffusion_generate(
                sdar,
                batch["input_ids"],
                batch["attention_mask"],
                max_new_tokens=16,
                block_length=4,
                return_dict_in_generate=True,
                output_step_map=True,
                stop_at_eos=False,
                use_cache=use_cache,
            )
            results[use_cache] = (out, list(calls))
    finally:
        hook.remove()
    (cached, cached_calls), (plain, plain_calls) = results[True], results[False]
    assert torch.equal(cached.sequences, plain.sequences) and torch.equal(cached.step_map, plain.step_map)
    assert cached.nfe == plain.nfe == 16 == len(cached_calls) == len(plain_calls)  # no extra prefill forward
    prompt_length = batch["input_ids"].shape[1]
    assert plain_calls == [prompt_length + 16] * 16
    # first step of a block carries the prompt (block 0) or the block just finished; later steps only the block
    assert cached_calls == [prompt_length + 4, 4, 4, 4] + [8, 4, 4, 4] * 3


# ---------------------------------------------------------------------------------------------- step_map replay
@pytest.mark.parametrize("family", ["generic", "sdar"])
def test_step_map_replays_intermediate_states(request, tokenizer, family):
    model = request.getfixturevalue(family)
    batch = tokenizer(["12+34=", "abc"], return_tensors="pt", padding=True, add_special_tokens=False)
    states = []
    out = diffusion_generate(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=12,
        block_length=4,
        tokens_per_step=2,
        return_dict_in_generate=True,
        output_step_map=True,
        stop_at_eos=False,
        step_callback=lambda step, canvas, undecided: states.append((step, canvas, undecided)),
    )
    completion = out.sequences[:, batch["input_ids"].shape[1] :]
    assert [s for s, _, _ in states] == list(range(out.nfe)) and out.nfe == 6
    for step, canvas, undecided in states:
        replay_masked = out.step_map >= step
        assert torch.equal(undecided, replay_masked)
        assert torch.equal(canvas, completion.masked_fill(replay_masked, tokenizer.mask_token_id))


# ---------------------------------------------------------------------------------------------- Dream shift
def test_dream_shift(dream_dir, tokenizer):
    """Decoding Dream equals decoding a view of it whose logits were realigned by hand (logit i-1 -> token i)."""
    dream = AutoModel.from_pretrained(dream_dir).eval()

    class Realigned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = copy.copy(dream.config)
            self.config.model_type = "realigned"
            self.config.is_causal = False  # Dream attends bidirectionally

        def forward(self, input_ids, **kwargs):
            logits = dream(input_ids=input_ids).logits
            return SimpleNamespace(logits=torch.cat([logits[:, :1], logits[:, :-1]], dim=1))

    prompt = torch.tensor([tokenizer("perm:abc", add_special_tokens=False)["input_ids"]])
    kwargs = dict(max_new_tokens=12, block_length=4, stop_at_eos=False)
    reference = diffusion_generate(
        Realigned(), prompt, adapter="generic", mask_token_id=tokenizer.mask_token_id, **kwargs
    )
    assert torch.equal(diffusion_generate(dream, prompt, processing_class=tokenizer, **kwargs), reference)

    class Unshifted(DreamAdapter):
        logits_shift = 0

    wrong = diffusion_generate(dream, prompt, adapter=Unshifted(dream.config, tokenizer), **kwargs)
    assert not torch.equal(wrong, reference)


# ---------------------------------------------------------------------------------------------- threshold
def test_threshold_commits_at_least_one_per_step_and_saves_forwards(generic_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(generic_dir).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(300.0)  # a confident model: peaked predictive distributions
    prompt = torch.tensor([tokenizer("12+34=", add_special_tokens=False)["input_ids"]])
    kwargs = dict(
        max_new_tokens=16, block_length=8, return_dict_in_generate=True, output_step_map=True, stop_at_eos=False
    )
    slow = diffusion_generate(model, prompt, **kwargs)
    fast = diffusion_generate(model, prompt, threshold=0.9, **kwargs)
    assert slow.nfe == 16 and fast.nfe < slow.nfe and fast.tokens_per_forward > 1.0
    steps = fast.step_map[0]
    assert set(steps.tolist()) == set(range(fast.nfe))  # every forward committed >= 1 token
    assert steps[:8].max() < steps[8:].min()  # never beyond the current block
    low = diffusion_generate(model, prompt, threshold=1.0, **kwargs)  # nothing passes: exactly the scheduled one
    assert low.nfe == 16


# ---------------------------------------------------------------------------------------------- EOS, a hand-made model
class ScriptedModel(torch.nn.Module):
    """Predicts token 10 + (position % 5) everywhere, EOS at completion index `eos_at[row]`; earlier = more confident."""

    def __init__(self, eos_at, completion_length, vocab=20):
        super().__init__()
        self.eos_at, self.length, self.vocab = eos_at, completion_length, vocab
        self.config = types.SimpleNamespace(
            is_causal=False, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS, vocab_size=vocab, model_type="x"
        )
        self.calls = 0

    def forward(self, input_ids, **kwargs):
        self.calls += 1
        batch, total = input_ids.shape
        index = torch.arange(total) - (total - self.length)
        logits = torch.zeros(batch, total, self.vocab)
        strength = 10.0 - 0.1 * index.clamp(min=0).float()  # left positions are more confident
        for row in range(batch):
            tokens = 10 + index.clamp(min=0) % 5
            tokens = torch.where(index == self.eos_at[row], torch.tensor(EOS), tokens)
            logits[row, torch.arange(total), tokens] = strength
        return types.SimpleNamespace(logits=logits)


def test_eos_early_stop_by_hand():
    model = ScriptedModel(eos_at=[5, 9], completion_length=16)
    prompt = torch.tensor([[10, 11, 12], [PAD, 10, 11]])
    out = diffusion_generate(
        model,
        prompt,
        torch.tensor([[1, 1, 1], [0, 1, 1]]),
        max_new_tokens=16,
        block_length=4,
        return_dict_in_generate=True,
        output_step_map=True,
    )
    completion = out.sequences[:, 3:]
    assert completion[0].tolist() == [10, 11, 12, 13, 14, EOS] + [PAD] * 10
    assert completion[1].tolist() == [10, 11, 12, 13, 14, 10, 11, 12, 13, EOS] + [PAD] * 6
    assert out.step_map[0].tolist() == [0, 1, 2, 3, 4, 5] + [-1] * 10
    assert out.step_map[1].tolist() == list(range(10)) + [-1] * 6
    assert out.nfe == model.calls == 10  # stops after the block where the last row ended (not 16)
    full = diffusion_generate(
        model,
        prompt,
        max_new_tokens=16,
        block_length=4,
        stop_at_eos=False,
        return_dict_in_generate=True,
        output_step_map=True,
    )
    assert full.nfe == 16 and (full.step_map >= 0).all()


# ---------------------------------------------------------------------------------------------- streamer
class Collector(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.ended = True


def test_streamer_receives_prompt_then_blocks(generic, tokenizer):
    prompt = torch.tensor([tokenizer("12+34=", add_special_tokens=False)["input_ids"]])
    streamer = Collector()
    out = diffusion_generate(generic, prompt, max_new_tokens=12, block_length=4, streamer=streamer, stop_at_eos=False)
    assert streamer.ended and len(streamer.chunks) == 4
    assert torch.equal(streamer.chunks[0], prompt)
    assert torch.equal(torch.cat(streamer.chunks[1:], dim=1), out[:, prompt.shape[1] :])


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_new_tokens=10, block_length=4), "Set `max_new_tokens` to a multiple of 4"),
        (dict(max_new_tokens=16, block_length=4, steps=6), "Use a multiple of 4"),
        (dict(max_new_tokens=8, block_length=4, steps=16), "Use steps <= 8"),
        (dict(steps=8, tokens_per_step=2), "Set one of them"),
        (dict(remasking="lowest"), "Choose one of"),
        (dict(max_new_tokens=8, block_length=4, tokens_per_step=5), "Use tokens_per_step <= 4"),
        (dict(threshold=0.9, remasking="random"), "drop the threshold"),
        (dict(temperature=-1.0), "must be >= 0"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionGenerationConfig(**kwargs)


def test_bad_inputs_raise(generic, tokenizer):
    ids = torch.tensor([[10, 11, 12]])
    with pytest.raises(ValueError, match="Remove it from the prompt"):
        diffusion_generate(generic, torch.tensor([[10, tokenizer.mask_token_id, 12]]), max_new_tokens=4)
    with pytest.raises(ValueError, match="distinct pad token"):
        diffusion_generate(
            generic, ids, max_new_tokens=4, processing_class=tokenizer, mask_token_id=tokenizer.pad_token_id
        )
    with pytest.raises(ValueError, match="Pad on the left"):
        diffusion_generate(generic, ids, torch.tensor([[1, 1, 0]]), max_new_tokens=4)
    with pytest.raises(ValueError, match="Set `max_new_tokens` to a multiple"):
        diffusion_generate(generic, ids, max_new_tokens=6, block_length=4)
    with pytest.raises(ValueError, match="Unknown decoding arguments"):
        diffusion_generate(generic, ids, max_new_tokens=4, blocklength=4)
    causal = testing.tiny_llama(32)
    with pytest.raises(ValueError, match='adapter="generic"'):
        diffusion_generate(causal, ids, max_new_tokens=4)
    causal.config.is_causal = False  # bidirectional, but no mask token anywhere
    with pytest.raises(ValueError, match="Pass `mask_token_id=...`"):
        diffusion_generate(causal, ids, max_new_tokens=4, adapter="generic")


# ---------------------------------------------------------------------------------------------- config and loading
def test_config_roundtrip(tmp_path):
    config = DiffusionGenerationConfig(
        max_new_tokens=32,
        block_length=8,
        tokens_per_step=2,
        remasking="margin",
        threshold=0.8,
        temperature=0.0,
        top_k=5,
        mask_token_id=2,
        output_step_map=True,
    )
    config.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "diffusion_generation_config.json")
    assert json.loads((tmp_path / "diffusion_generation_config.json").read_text())["temperature"] == 0.0
    loaded = DiffusionGenerationConfig.from_pretrained(tmp_path)
    for key in (
        "max_new_tokens",
        "block_length",
        "tokens_per_step",
        "steps",
        "remasking",
        "threshold",
        "temperature",
        "top_k",
        "mask_token_id",
        "stop_at_eos",
        "output_step_map",
    ):
        assert getattr(loaded, key) == getattr(config, key), key
    assert loaded.steps_per_block() == 4 and loaded.block_schedule() == [2, 2, 2, 2]
    assert DiffusionGenerationConfig().steps_per_block() == 128  # defaults: one block, one token per step


@pytest.mark.parametrize("family", ["generic", "llada", "dream", "sdar"])
def test_auto_model_loads_each_family(request, tokenizer, tmp_path, family):
    directory = request.getfixturevalue(f"{family}_dir")
    model = AutoModelForDiffusionLM.from_pretrained(directory, trust_remote_code=True, processing_class=tokenizer)
    assert isinstance(model, DiffusionLMGenerationMixin) and model.get_diffusion_adapter().name == family
    model.diffusion_generation_config = DiffusionGenerationConfig(max_new_tokens=8, block_length=4, tokens_per_step=2)
    out = model.diffusion_generate(torch.tensor([[10, 11, 12]]), return_dict_in_generate=True)
    assert out.sequences.shape == (1, 11) and out.nfe <= 4
    if family == "generic":  # the mixin saves the decoding settings; the loader reads them back
        model.save_pretrained(tmp_path)
        reloaded = AutoModelForDiffusionLM.from_pretrained(tmp_path)
        assert reloaded.diffusion_generation_config.tokens_per_step == 2
        assert torch.equal(reloaded.diffusion_generate(torch.tensor([[10, 11, 12]])), out.sequences)


def test_add_diffusion_generation_and_custom_loader(generic, generic_dir):
    model = add_diffusion_generation(generic, adapter="generic")
    assert isinstance(model, LlamaForCausalLM) and isinstance(model, DiffusionLMGenerationMixin)
    assert model.diffusion_generate(torch.tensor([[10, 11]]), max_new_tokens=4).shape == (1, 6)

    class Loader(GenericMaskedLMAdapter):
        name = "loader_test"
        auto_class = "NotInTransformers"

        @classmethod
        def load_model(cls, name_or_path, config=None, **kwargs):
            return LlamaForCausalLM.from_pretrained(name_or_path, config=config)

    loaded = AutoModelForDiffusionLM.from_pretrained(generic_dir, adapter=Loader)
    assert loaded.get_diffusion_adapter().name == "loader_test"

    class NoLoader(GenericMaskedLMAdapter):
        name = "no_loader_test"
        auto_class = "NotInTransformers"

    with pytest.raises(ValueError, match="load_model"):
        AutoModelForDiffusionLM.from_pretrained(generic_dir, adapter=NoLoader)


def test_public_api():
    for name in (
        "DiffusionGenerationConfig",
        "DiffusionGenerateOutput",
        "DiffusionLMGenerationMixin",
        "diffusion_generate",
        "add_diffusion_generation",
        "AutoModelForDiffusionLM",
        "get_adapter",
        "register_adapter",
        "DiffusionAdapter",
    ):
        assert hasattr(trl_t3d, name), name


# ---------------------------------------------------------------------------------------------- the mask is noise
def _prefers_the_mask(model, mask_id, boost=30.0):
    """Make the mask token the model's most likely word everywhere (an output hook on the LM head)."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., mask_id] += boost
        return output

    return model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 100.0])
def test_the_mask_token_is_never_committed(tokenizer, temperature):
    model = testing.make_generic_mlm(tokenizer)
    handle = _prefers_the_mask(model, tokenizer.mask_token_id, boost=30.0 * max(1.0, temperature))
    batch = tokenizer(["12+34=", "x", "perm:abc"], return_tensors="pt", padding=True, add_special_tokens=False)
    out = diffusion_generate(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        processing_class=tokenizer,
        max_new_tokens=16,
        block_length=4,
        temperature=temperature,
        stop_at_eos=False,
        return_dict_in_generate=True,
        output_step_map=True,
        generator=torch.Generator().manual_seed(0),
    )
    handle.remove()
    completion = out.sequences[:, batch["input_ids"].shape[1] :]
    assert not (completion == tokenizer.mask_token_id).any()
    assert (out.step_map >= 0).all() and out.nfe == 16


def test_propose_tokens_by_hand():
    # position 0: the mask (id 2) is the argmax; position 1: token 3. Confidence stays the model's p(x0).
    logits = torch.tensor([[[0.0, 1.0, 5.0, 2.0], [0.0, 0.0, 0.0, 4.0]]])
    x0, confidence = propose_tokens(logits, "low_confidence", 0.0, never_ids=(2,))
    assert x0.tolist() == [[3, 3]]
    torch.testing.assert_close(confidence, torch.softmax(logits.double(), -1)[..., 3])
    # top-k 1 keeps only the mask at position 0 before exclusion; excluded first, the next word is proposed
    x0, _ = propose_tokens(logits, "low_confidence", 0.0, top_k=1, never_ids=(2,))
    assert x0.tolist() == [[3, 3]]
    # at a temperature whose noise underflows (0/0 = NaN scores), an excluded token still never wins
    for seed in range(20):
        x0, _ = propose_tokens(
            logits, "low_confidence", 1000.0, never_ids=(2,), generator=torch.Generator().manual_seed(seed)
        )
        assert 2 not in x0.tolist()[0]
