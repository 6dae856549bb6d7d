"""DiffusionGemma (native transformers class): detection, the encoder-prefix + canvas forward, decoding, LoRA, DDO."""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, DiffusionGemmaForBlockDiffusion, DynamicCache  # noqa: E402

from trl_t3d import testing  # noqa: E402
from trl_t3d.adapters import DiffusionGemmaAdapter, get_adapter, resolve_adapter_class  # noqa: E402
from trl_t3d.generation import AutoModelForDiffusionLM, diffusion_generate  # noqa: E402

CANVAS = 4


@pytest.fixture(scope="module")
def tok():
    return testing.make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    # A sliding window (6) shorter than prompt + completion, so the per-layer window masks are exercised.
    return testing.make_diffusion_gemma(tok, canvas_length=CANVAS, sliding_window=6)


@pytest.fixture(scope="module")
def adapter(model, tok):
    return get_adapter(model, tokenizer=tok)


@pytest.fixture(scope="module")
def dg_dir(tmp_path_factory):
    return testing.save_diffusion_gemma(str(tmp_path_factory.mktemp("diffusion_gemma")), canvas_length=CANVAS)


def _ids(tok, n, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, len(tok), (n, length), generator=g)


def _native_block_logits(model, prompt, context, noisy_block):
    """What native `generate` runs for one canvas: encoder over prompt + finished canvases, decoder over the canvas."""
    cache = DynamicCache(config=model.config.get_text_config())
    return model(input_ids=torch.cat([prompt, context], 1), cache=cache, decoder_input_ids=noisy_block).logits


# ---------------------------------------------------------------------------------------------- detection
def test_adapter_detected_from_config_with_uniform_noise(model, dg_dir, tok):
    for config in (model.config, AutoConfig.from_pretrained(dg_dir)):
        assert resolve_adapter_class(config) is DiffusionGemmaAdapter
        adapter = get_adapter(config)  # no tokenizer, no mask token: uniform noise needs none
        assert adapter.name == "diffusion_gemma" and adapter.noise == "uniform" and adapter.block_causal
        assert adapter.mask_token_id is None
        assert (adapter.pad_token_id, adapter.eos_token_ids) == (tok.pad_token_id, [tok.eos_token_id])
    assert getattr(transformers, DiffusionGemmaAdapter.auto_class) is DiffusionGemmaForBlockDiffusion
    assert get_adapter(model, adapter="diffusion_gemma", tokenizer=tok).mask_token_id is None


def test_noise_tokens_are_uniform_random_where_asked(adapter, tok):
    clean = _ids(tok, 4, 64, 0)
    noise_mask = torch.rand(4, 64, generator=torch.Generator().manual_seed(1)) < 0.5
    noisy = adapter.noise_tokens(clean, noise_mask, torch.Generator().manual_seed(2), len(tok))
    assert torch.equal(noisy[~noise_mask], clean[~noise_mask])
    assert bool((noisy[noise_mask] != clean[noise_mask]).float().mean() > 0.8)  # fresh draws, not the clean tokens
    assert int(noisy.min()) >= 0 and int(noisy.max()) < len(tok)


# ---------------------------------------------------------------------------------------------- forward
def test_completion_logits_equal_native_per_block_calls(model, adapter, tok):
    prompt, clean, noisy = _ids(tok, 2, 5, 0), _ids(tok, 2, 12, 1), _ids(tok, 2, 12, 2)
    logits = adapter.completion_logits(model, prompt, None, noisy, clean_completion=clean, block_length=CANVAS)
    assert logits.shape == (2, 12, len(tok))
    for b in range(3):
        s, e = b * CANVAS, (b + 1) * CANVAS
        native = _native_block_logits(model, prompt, clean[:, :s], noisy[:, s:e])
        torch.testing.assert_close(logits[:, s:e], native, atol=1e-5, rtol=1e-5)
    # Without `clean_completion` the noisy canvas is its own context (decoding: earlier blocks are decided).
    own = adapter.completion_logits(model, prompt, None, noisy, block_length=CANVAS)
    torch.testing.assert_close(own[:, 4:8], _native_block_logits(model, prompt, noisy[:, :4], noisy[:, 4:8]))


def test_canvas_reads_prompt_and_is_bidirectional_within_block_causal_across(model, adapter, tok):
    prompt, clean, noisy = _ids(tok, 1, 5, 3), _ids(tok, 1, 8, 4), _ids(tok, 1, 8, 5)

    def logits(p=prompt, c=clean, n=noisy):
        return adapter.completion_logits(model, p, None, n, clean_completion=c, block_length=CANVAS)

    base = logits()
    other_prompt = prompt.clone()
    other_prompt[0, 0] = 11 if int(prompt[0, 0]) != 11 else 12
    assert not torch.allclose(logits(p=other_prompt)[:, :4], base[:, :4])  # the encoder's prefix is read
    last_of_block = noisy.clone()
    last_of_block[0, 3] = 11 if int(noisy[0, 3]) != 11 else 12
    changed = logits(n=last_of_block)
    assert not torch.allclose(changed[:, 0], base[:, 0])  # position 0 sees position 3: bidirectional canvas
    torch.testing.assert_close(changed[:, 4:], base[:, 4:])  # block 1 reads the clean context, not x_t block 0
    later_clean = clean.clone()
    later_clean[0, 2] = 11 if int(clean[0, 2]) != 11 else 12
    changed = logits(c=later_clean)
    torch.testing.assert_close(changed[:, :4], base[:, :4])  # block 0 never sees the clean block 0 (no leak)
    assert not torch.allclose(changed[:, 4:], base[:, 4:])  # block 1 reads clean block 0 through the encoder


def test_left_padded_prompt_gives_the_same_logits(model, adapter, tok):
    enc = tok(["ab", "hello"], return_tensors="pt", padding=True)
    alone = tok(["ab"], return_tensors="pt")["input_ids"]
    noisy = _ids(tok, 1, 8, 6)
    batched = adapter.completion_logits(
        model, enc["input_ids"], enc["attention_mask"], noisy.expand(2, -1), block_length=CANVAS
    )
    single = adapter.completion_logits(model, alone, None, noisy, block_length=CANVAS)
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched[:1], single, atol=1e-5, rtol=1e-5)


def test_policy_log_probs_are_finite_with_gradient(tok, adapter):
    policy = testing.make_diffusion_gemma(tok, canvas_length=CANVAS).train()
    prompt, clean = _ids(tok, 2, 5, 7), _ids(tok, 2, 8, 8)
    noise_mask = torch.ones_like(clean, dtype=torch.bool)
    noisy = adapter.noise_tokens(clean, noise_mask, torch.Generator().manual_seed(0), len(tok))
    logits = adapter.completion_logits(policy, prompt, None, noisy, clean_completion=clean, block_length=CANVAS)
    logps = torch.log_softmax(logits.float(), -1).gather(-1, clean[..., None]).squeeze(-1)
    assert torch.isfinite(logps).all() and logps.requires_grad
    logps.mean().backward()
    embed = policy.get_input_embeddings().weight  # tied: encoder, decoder and LM head
    q = policy.model.decoder.layers[0].self_attn.q_proj.weight  # tied with the encoder's layer 0
    assert embed.grad is not None and embed.grad.abs().sum() > 0 and q.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- decoding
def test_diffusion_generate_decodes_every_block_with_step_map(model, tok):
    enc = tok(["ab", "hello"], return_tensors="pt", padding=True)
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = diffusion_generate(
            model,
            enc["input_ids"],
            enc["attention_mask"],
            processing_class=tok,
            max_new_tokens=12,  # block_length defaults to the model's canvas_length (4)
            stop_at_eos=False,
            output_step_map=True,
            return_dict_in_generate=True,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        handle.remove()
    assert out.sequences.shape == (2, 5 + 12) and out.step_map.shape == (2, 12)
    assert torch.equal(out.sequences[:, :5], enc["input_ids"])
    assert out.nfe == 12 and len(calls) == 12  # one token per step; the encoder rides along on each block's 1st call
    for b in range(3):  # block b is decided in forwards 4b .. 4b + 3, each once
        block = out.step_map[:, b * CANVAS : (b + 1) * CANVAS]
        assert torch.equal(block.sort(-1).values, torch.arange(4 * b, 4 * b + 4).expand(2, -1))
    no_cache = diffusion_generate(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        processing_class=tok,
        max_new_tokens=12,
        stop_at_eos=False,
        output_step_map=True,
        return_dict_in_generate=True,
        generator=torch.Generator().manual_seed(0),
        use_cache=False,
    )
    assert torch.equal(no_cache.sequences, out.sequences) and torch.equal(no_cache.step_map, out.step_map)
    alone = tok(["ab"], return_tensors="pt")["input_ids"]
    single = diffusion_generate(
        model, alone, max_new_tokens=12, stop_at_eos=False, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(single[:, -12:], out.sequences[:1, -12:])  # batch invariance (same noise draws for row 0)


def test_parallel_decoding_and_self_conditioning(model, tok):
    prompt = tok(["hi"], return_tensors="pt")["input_ids"]
    out = diffusion_generate(
        model, prompt, max_new_tokens=8, tokens_per_step=2, stop_at_eos=False, return_dict_in_generate=True
    )
    assert out.nfe == 4 and out.sequences.shape == (1, 2 + 8)
    native_like = DiffusionGemmaAdapter(model.config, tokenizer=tok)
    native_like.decode_self_conditioning = True  # previous step's logits fed back, as native `generate` does
    out_sc = diffusion_generate(
        model, prompt, adapter=native_like, max_new_tokens=8, stop_at_eos=False, return_dict_in_generate=True
    )
    assert out_sc.nfe == 8 and out_sc.sequences.shape == (1, 2 + 8)


# ---------------------------------------------------------------------------------------------- save / load
def test_save_load_roundtrip_through_native_class_and_auto_loader(dg_dir, tok):
    original = testing.make_diffusion_gemma(tok, canvas_length=CANVAS)
    loaded = DiffusionGemmaForBlockDiffusion.from_pretrained(dg_dir).eval()
    prompt, noisy = _ids(tok, 1, 5, 9), _ids(tok, 1, 4, 10)
    torch.testing.assert_close(
        _native_block_logits(loaded, prompt, prompt[:, :0], noisy),
        _native_block_logits(original, prompt, prompt[:, :0], noisy),
    )
    auto = AutoModelForDiffusionLM.from_pretrained(dg_dir, processing_class=tok)
    assert isinstance(auto, DiffusionGemmaForBlockDiffusion)
    assert auto.get_diffusion_adapter().name == "diffusion_gemma"
    out = auto.diffusion_generate(prompt, max_new_tokens=8, stop_at_eos=False)
    assert out.shape == (1, 5 + 8)


# ---------------------------------------------------------------------------------------------- LoRA and DDO
def test_lora_on_resolved_targets_gets_gradient(tok, adapter):
    from peft import LoraConfig, get_peft_model

    policy = testing.make_diffusion_gemma(tok, canvas_length=CANVAS)
    targets = adapter.resolve_lora_targets(policy)
    assert all(".vision_tower." not in t and ".self_conditioning." not in t for t in targets)
    assert any(t.startswith("model.decoder.layers.") for t in targets)
    assert any(t.startswith("model.encoder.language_model.layers.") for t in targets)
    # The last encoder layer only feeds the cache: its queries, output and MLP are unused, so not targeted.
    assert "model.encoder.language_model.layers.1.self_attn.q_proj" not in targets
    assert "model.encoder.language_model.layers.1.self_attn.k_proj" in targets
    peft_model = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    peft_model.train()
    prompt, clean, noisy = _ids(tok, 2, 5, 11), _ids(tok, 2, 8, 12), _ids(tok, 2, 8, 13)
    logits = adapter.completion_logits(peft_model, prompt, None, noisy, clean_completion=clean, block_length=CANVAS)
    logps = torch.log_softmax(logits.float(), -1).gather(-1, clean[..., None]).squeeze(-1)
    assert torch.isfinite(logps).all()
    logps.mean().backward()
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    dead = [n for n, p in trainable.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, dead


def test_ddo_trainer_with_lora_runs_one_policy_forward_and_the_reference_forwards_of_its_terms(tmp_path, tok, dg_dir):
    from datasets import Dataset

    from trl_t3d import DDOConfig

    g = torch.Generator().manual_seed(0)
    rows = [
        {
            "prompt_ids": torch.randint(10, len(tok), (4 + i % 2,), generator=g).tolist(),
            "completion_ids": torch.randint(10, len(tok), (8,), generator=g).tolist(),
            "step_map": [int(s) for s in torch.randperm(4, generator=g)] + [4 + int(s) for s in torch.randperm(4)],
            "block_length": CANVAS,
        }
        for i in range(2)
    ]
    args = DDOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        mask_ratios=[1.0],  # fully masked: every mean-field query holds a position
        loss_type="t3d_mf",
        mean_field_queries=4,
    )
    trainer = testing.ddo_trainer(dg_dir, args, Dataset.from_list(rows), tok, lora=True)
    assert trainer.ref_model is None and trainer.adapter.name == "diffusion_gemma"
    calls = []
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    handle = trainer.model.get_base_model().register_forward_hook(lambda *a: calls.append(1))
    trainer.train()
    handle.remove()
    assert len(calls) == 1 + 1 + 4  # policy, DDO's reference (adapters disabled), 4 mean-field queries
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer.state.log_history[0].values() if isinstance(v, float))
    # the one step trained the adapters and only them: every LoRA B starts at zero (PEFT's init) and has moved (its
    # gradient is nonzero while A's is zero at B = 0, so A stays put); the base weights are bit for bit the loaded ones
    after = dict(trainer.model.named_parameters())
    lora_b = [n for n in after if "lora_B" in n]
    assert lora_b and all(not before[n].any() for n in lora_b)
    assert [n for n in lora_b if not after[n].detach().any()] == []
    frozen = [n for n in after if "lora_" not in n]
    assert frozen and [n for n in frozen if not torch.equal(after[n].detach(), before[n])] == []
    # encoder and decoder share base weights but not adapters: merging would add both deltas to one weight
    for merge in (
        trainer.model.merge_and_unload,
        trainer.model.base_model.merge_and_unload,
        trainer.model.merge_adapter,
    ):
        with pytest.raises(ValueError, match="share their base weights"):
            merge()
