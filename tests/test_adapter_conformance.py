"""Conformance tests every family's adapter must pass when decoding (DESIGN.md, "Model families")."""

import pytest
import torch
import transformers

from trl_t3d import diffusion_generate, get_adapter, testing

FAMILIES = {
    "generic": ("generic_dir", "AutoModelForCausalLM"),
    "generic_remote": ("remote_mlm_dir", "AutoModel"),
    "llada": ("llada_dir", "AutoModel"),
    "dream": ("dream_dir", "AutoModel"),
    "sdar": ("sdar_dir", "AutoModelForCausalLM"),
    "llada2": ("llada2_dir", "AutoModelForCausalLM"),
}
NATIVE = ("generic", "llada", "dream", "sdar")  # transformers or trl_t3d classes: loaded without remote code
PROMPTS = ["12+34=", "perm:abcde", "x"]


def load(request, family):
    fixture, auto_class = FAMILIES[family]
    directory = request.getfixturevalue(fixture)
    if family in NATIVE:
        return getattr(transformers, auto_class).from_pretrained(directory).eval()
    return testing.load_remote(directory, auto_class)


def decode(model, tokenizer, prompts, **kwargs):
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = {
        "max_new_tokens": 12,
        "block_length": 4,
        "return_dict_in_generate": True,
        "output_step_map": True,
        **kwargs,
    }
    out = diffusion_generate(model, batch["input_ids"], batch["attention_mask"], processing_class=tokenizer, **kwargs)
    return out, batch["input_ids"].shape[1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_decodes_completely(request, tokenizer, family):
    model = load(request, family)
    assert get_adapter(model, tokenizer=tokenizer).name == family.removesuffix("_remote")
    out, prompt_length = decode(model, tokenizer, PROMPTS, stop_at_eos=False)
    completion = out.sequences[:, prompt_length:]
    assert not (completion == tokenizer.mask_token_id).any()
    assert (out.step_map >= 0).all() and out.nfe == 12  # one token per step, 12 tokens
    # each forward pass commits exactly one token per row
    for row in out.step_map:
        assert sorted(row.tolist()) == list(range(12))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_invariance(request, tokenizer, family):
    """A prompt decodes to the same tokens alone and inside a left-padded batch."""
    model = load(request, family)
    batched, width = decode(model, tokenizer, PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        alone, alone_width = decode(model, tokenizer, [prompt])
        assert torch.equal(batched.sequences[row, width:], alone.sequences[0, alone_width:]), prompt
        assert torch.equal(batched.step_map[row], alone.step_map[0]), prompt


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cache_matches_no_cache(request, tokenizer, family):
    """The exact cache (block-causal families) changes no token; other families ignore `use_cache`."""
    model = load(request, family)
    cached, _ = decode(model, tokenizer, PROMPTS, tokens_per_step=2, use_cache=True)
    plain, _ = decode(model, tokenizer, PROMPTS, tokens_per_step=2, use_cache=False)
    assert torch.equal(cached.sequences, plain.sequences)
    assert torch.equal(cached.step_map, plain.step_map) and cached.nfe == plain.nfe
