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
NATIVE = ("generic", "llada", "dream", "sdar", "llada2")  # transformers or trl_t3d classes: loaded without remote code
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


# ---------------------------------------------------------------------------------------------- the adapter contract
def test_every_registered_family_implements_the_contract():
    """`BaseDiffusionAdapter` declares the contract; every registered family fills it with sensible values."""
    import inspect

    from trl_t3d.adapters import ADAPTERS, BaseDiffusionAdapter, register_adapter

    for name, cls in ADAPTERS.items():
        assert issubclass(cls, BaseDiffusionAdapter) and not inspect.isabstract(cls), name
        assert cls.name == name and isinstance(cls.auto_class, str) and isinstance(cls.model_types, tuple), name
        assert cls.noise in ("mask", "uniform") and cls.logits_shift in (0, 1), name
        assert isinstance(cls.block_causal, bool) and isinstance(cls.supports_gradient_checkpointing, bool), name
        assert cls.lora_target_modules and all(isinstance(t, str) for t in cls.lora_target_modules), name
        assert cls.noise == "uniform" or cls.default_mask_token_id is not None or cls.mask_token_names, name
        if cls.cached_forward is not BaseDiffusionAdapter.cached_forward:  # the exact block KV cache
            assert cls.block_causal and cls.init_cache is not BaseDiffusionAdapter.init_cache, name

    class NoForward(BaseDiffusionAdapter):  # the one hook with no default: the forward decoding and training share
        name = "no_forward"

    with pytest.raises(TypeError, match="completion_logits"):
        NoForward()
    with pytest.raises(TypeError, match="BaseDiffusionAdapter"):
        register_adapter(dict)


def _recording(adapter):
    """A copy of `adapter` that records every attribute used from outside `trl_t3d/adapters/`."""
    import copy
    import os
    import sys

    import trl_t3d.adapters

    inside = os.path.dirname(trl_t3d.adapters.__file__)
    used = set()
    base = type(adapter)

    def __getattribute__(self, name):
        if not name.startswith("__") and not sys._getframe(1).f_code.co_filename.startswith(inside):
            used.add(name)
        return object.__getattribute__(self, name)

    recording = copy.copy(adapter)
    recording.__class__ = type(base.__name__, (base,), {"__getattribute__": __getattribute__})
    return recording, used


def _contract():
    from trl_t3d.adapters import BaseDiffusionAdapter

    declared = {n for n in dir(BaseDiffusionAdapter) if not n.startswith("__")}
    return declared | set(BaseDiffusionAdapter.__annotations__)


@pytest.mark.parametrize("family", ["generic", "llada", "dream", "sdar", "diffusion_gemma"])
def test_decoder_and_collection_use_only_the_contract(request, tokenizer, family):
    import datasets

    from trl_t3d import DiffusionGenerationConfig, collect_trajectories

    model = testing.make_diffusion_gemma(tokenizer) if family == "diffusion_gemma" else load(request, family)
    adapter, used = _recording(get_adapter(model, tokenizer=tokenizer))
    for use_cache in (True, False):
        decode(model, tokenizer, PROMPTS, adapter=adapter, use_cache=use_cache, tokens_per_step=2)
    collect_trajectories(
        model,
        tokenizer,
        datasets.Dataset.from_dict({"prompt": PROMPTS}),
        DiffusionGenerationConfig(max_new_tokens=8, block_length=4),
        adapter=adapter,
        show_progress=False,
    )
    assert "completion_logits" in used or "decoding_session" in used
    assert used <= _contract(), f"undeclared adapter hooks used: {sorted(used - _contract())}"


@pytest.mark.parametrize("family", ["generic", "sdar"])
def test_trainer_and_collator_use_only_the_contract(request, tokenizer, tmp_path, family):
    import datasets
    from peft import LoraConfig

    from trl_t3d import DDOConfig, DDOTrainer

    rows = [{"prompt_ids": [10, 11, 12], "completion_ids": [20, 21, 22, 23, 1, 1, 1, 1], "step_map": list(range(8))}]
    data = datasets.Dataset.from_list([{**r, "block_length": 4} for r in rows * 2])
    for peft_config in (None, LoraConfig(r=2, lora_alpha=4)):
        model = load(request, family)
        adapter, used = _recording(get_adapter(model, tokenizer=tokenizer))
        args = DDOConfig(
            output_dir=str(tmp_path), report_to="none", use_cpu=True, activation_checkpointing=False, max_steps=1
        )
        trainer = DDOTrainer(
            model, args=args, train_dataset=data, processing_class=tokenizer, adapter=adapter, peft_config=peft_config
        )
        batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
        trainer.compute_loss(trainer.model, batch)
        assert {"completion_logits", "mask_token_id", "block_causal"} <= used
        assert used <= _contract(), f"undeclared adapter hooks used: {sorted(used - _contract())}"
