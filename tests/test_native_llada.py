"""Native LLaDA vs the original code: golden fixtures made by `tests/golden/gen_llada.py` on transformers 4.57."""

import json
import os
import subprocess
import sys

import pytest
import torch
from golden._common import needs_original
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from trl_t3d import testing
from trl_t3d.models import register_native_models
from trl_t3d.models.llada import (
    TINY_SPECIAL_TOKEN_IDS,
    LLaDAConfig,
    LLaDAModelLM,
    make_tiny_tokenizer,
)
from trl_t3d.models.llada.tokenization_llada import CHAT_TEMPLATE

register_native_models()

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "llada")
VARIANTS = {"main": GOLDEN, "gqa_tied": os.path.join(GOLDEN, "gqa_tied")}
CASES = ("a", "b", "c")
BOOKKEEPING_KEYS = {"transformers_version", "dtype", "torch_dtype"}
TOLERANCE = 1e-4


def golden(variant="main"):
    return load_file(os.path.join(VARIANTS[variant], "golden.safetensors"))


def case_inputs(tensors, case):
    return {
        key.split(".", 1)[1]: value
        for key, value in tensors.items()
        if key.startswith(f"{case}.") and not key.endswith(("logits", "hidden_states"))
    }


def load(variant="main", **kwargs):
    model = AutoModel.from_pretrained(VARIANTS[variant], **kwargs)
    return model.eval()


# ---------------------------------------------------------------- equality with the original code
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_golden_logits(variant, attn_implementation):
    model, info = AutoModel.from_pretrained(
        VARIANTS[variant], output_loading_info=True, attn_implementation=attn_implementation
    )
    assert type(model) is LLaDAModelLM and model.config._attn_implementation == attn_implementation
    assert not any(info.values()), info
    # Nothing re-initialized: every parameter is the checkpoint's tensor (the tied head is `wte`).
    checkpoint = load_file(os.path.join(VARIANTS[variant], "model.safetensors"))
    for name, param in model.named_parameters(remove_duplicate=False):
        source = name if name in checkpoint else model.all_tied_weights_keys[name]
        assert torch.equal(param, checkpoint[source]), name

    expected = golden(variant)
    model.eval()
    with torch.no_grad():
        for case in CASES:
            out = model(**case_inputs(expected, case), use_cache=False, output_hidden_states=True)
            assert (out.logits - expected[f"{case}.logits"]).abs().max().item() <= TOLERANCE, case
            if f"{case}.hidden_states" in expected:
                hidden = torch.stack(out.hidden_states)
                assert (hidden - expected[f"{case}.hidden_states"]).abs().max().item() <= TOLERANCE


def test_golden_cases_exercise_the_mask():
    """The fixtures can fail: padding changes row 0 in the original, the block bias changes both rows."""
    expected = golden()
    a, b, c = (expected[f"{case}.logits"] for case in CASES)
    assert (a[0, 3:] - b[0, 3:]).abs().max() > 1e-2  # the 3 hidden pad keys matter
    assert torch.equal(a[1], b[1])  # row 1 has no padding: unchanged
    assert (b - c).abs().amax(dim=(1, 2)).min() > 1e-2


def test_auto_model_for_causal_lm_and_loaded_without_remote_code():
    config = AutoConfig.from_pretrained(GOLDEN)
    assert type(config) is LLaDAConfig and config.auto_map["AutoModel"] == "modeling_llada.LLaDAModelLM"
    assert type(AutoModelForCausalLM.from_pretrained(GOLDEN)) is LLaDAModelLM
    # transformers 5 prefers an explicitly registered class over the checkpoint's `auto_map` code
    assert type(AutoModel.from_pretrained(GOLDEN, trust_remote_code=True)) is LLaDAModelLM
    assert config.is_causal is False


def test_sdpa_matches_eager_on_padded_batch():
    sdpa, eager = load(attn_implementation="sdpa"), load(attn_implementation="eager")
    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :11] = 0
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            diff = (sdpa(ids, **kwargs).logits - eager(ids, **kwargs).logits).abs().max().item()
            assert diff <= 1e-5, kwargs


def test_original_conventions_positions_and_masks():
    """No position ids means 0..T-1 whatever the padding; an all-ones 2D mask is no mask; 4D masks equal the bias."""
    model, expected = load(), golden()
    ids, mask, bias = expected["c.input_ids"], expected["c.attention_mask"], expected["c.attention_bias"]
    with torch.no_grad():
        plain = model(ids).logits
        assert torch.equal(model(ids, attention_mask=torch.ones_like(mask)).logits, plain)
        assert torch.equal(model(ids, position_ids=torch.arange(ids.shape[1])[None]).logits, plain)
        shifted = model(ids, position_ids=torch.arange(ids.shape[1])[None] + 5).logits
        assert (shifted - plain).abs().max() < 1e-4  # RoPE only sees relative positions
        stretched = model(ids, position_ids=2 * torch.arange(ids.shape[1])[None]).logits
        assert (stretched - plain).abs().max() > 1e-2  # explicit positions do reach RoPE
        as_4d = model(ids, attention_mask=bias.expand(2, 1, -1, -1) & mask.bool()[:, None, None, :]).logits
        assert (as_4d - expected["c.logits"]).abs().max().item() <= TOLERANCE


def test_output_format():
    model, expected = load(), golden()
    ids = expected["a.input_ids"]
    with torch.no_grad():
        full = model(ids).logits
        assert full.shape == (2, 12, model.config.embedding_size)
        assert torch.equal(model(ids, return_dict=False)[0], full)
        assert torch.allclose(model(ids, logits_to_keep=3).logits, full[:, -3:], atol=1e-6)
        assert model(ids, labels=ids).loss is None  # as the original: no loss for a masked diffusion LM


# ---------------------------------------------------------------- training
def _grads(model, ids):
    model.zero_grad()
    logits = model(ids, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}, loss


def test_gradient_checkpointing_same_grads_and_recomputes():
    model, ids = load().train(), golden()["a.input_ids"]
    calls = []
    model.model.transformer.blocks[0].attn_norm.register_forward_hook(lambda *args: calls.append(1))
    plain, _ = _grads(model, ids)
    assert len(calls) == 1
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.model.transformer.blocks)
    calls.clear()
    checkpointed, loss = _grads(model, ids)
    assert len(calls) == 2  # the block ran again in the backward pass
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-6, rtol=1e-5), name
    before = model.model.transformer.blocks[0].q_proj.weight.clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model.model.transformer.blocks[0].q_proj.weight)
    assert torch.isfinite(loss)


def test_bf16_device_map_load_and_forward():
    model = AutoModel.from_pretrained(GOLDEN, device_map="cpu", dtype=torch.bfloat16).eval()
    assert model.model.transformer.wte.weight.dtype == torch.bfloat16
    expected = golden()
    with torch.no_grad():
        for case in CASES:
            logits = model(**case_inputs(expected, case)).logits
            assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
            assert (logits.float() - expected[f"{case}.logits"]).abs().max().item() < 0.25, case


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_round_trip(tmp_path, variant):
    with open(os.path.join(VARIANTS[variant], "config.json")) as f:
        published = json.load(f)
    load(variant).save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    assert set(saved) - BOOKKEEPING_KEYS == set(published) - BOOKKEEPING_KEYS
    assert {k: v for k, v in saved.items() if k not in BOOKKEEPING_KEYS} == {
        k: v for k, v in published.items() if k not in BOOKKEEPING_KEYS
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_round_trip(tmp_path, variant):
    """What we save has the original's keys and tensors (no `ff_out` when tied, as the original) and reloads."""
    load(variant).save_pretrained(tmp_path)
    with safe_open(os.path.join(VARIANTS[variant], "model.safetensors"), "pt") as f:
        published = {key: f.get_tensor(key) for key in f.keys()}
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(published)
    assert all(torch.equal(saved[key], published[key]) for key in published)
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values())
    ids = golden(variant)["a.input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(ids).logits, load(variant)(ids).logits)


def test_published_8b_config_builds_the_published_architecture():
    """The published LLaDA-8B config (keys of the golden config, 8B values) gives the 8.02B-parameter layout."""
    with open(os.path.join(GOLDEN, "config.json")) as f:
        config_dict = json.load(f)
    config_dict.update(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
        embedding_size=126464, max_sequence_length=4096, mask_token_id=126336, eos_token_id=126081,
        pad_token_id=126081, torch_dtype="bfloat16",
    )  # fmt: skip
    config = LLaDAConfig.from_dict(config_dict)
    with torch.device("meta"):
        model = LLaDAModelLM(config)
    per_block = 4 * 4096 * 4096 + 3 * 4096 * 12288 + 2 * 4096
    assert model.num_parameters() == 2 * 126464 * 4096 + 32 * per_block + 4096
    assert config.hidden_size == 4096 and config.num_key_value_heads == 32 and not config.tie_word_embeddings


def test_resize_token_embeddings_keeps_config_consistent(tmp_path):
    model = load()
    model.resize_token_embeddings(336)
    assert model.config.embedding_size == model.config.vocab_size == 336
    model.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).model.transformer.ff_out.weight.shape == (336, 32)


def _std_ratio(weight, expected):
    return weight.float().std().item() / expected


@pytest.mark.parametrize("init_fn", ["mitchell", "normal"])
def test_fresh_initialization_follows_init_fn(init_fn):
    torch.manual_seed(0)
    model = LLaDAModelLM(LLaDAConfig.from_pretrained(GOLDEN, init_fn=init_fn))  # d_model 32, mlp 96, 2 layers
    block = model.model.transformer.blocks[1]
    if init_fn == "mitchell":  # std 1/sqrt(fan_in), output projections / sqrt(2 (layer + 1)), cut at 3 std
        expected = {block.q_proj: 32**-0.5, block.attn_out: 32**-0.5 / 2, block.ff_out: 96**-0.5 / 2}
    else:  # init_std, the residual ff_out / sqrt(2 n_layers)
        expected = {block.q_proj: 0.02, block.attn_out: 0.02, block.ff_out: 0.01}
    expected[model.model.transformer.wte] = expected[model.model.transformer.ff_out] = expected[block.q_proj]
    for module, std in expected.items():
        assert 0.9 < _std_ratio(module.weight, std) < 1.1, module
    assert torch.equal(block.attn_norm.weight, torch.ones(32))


def test_weight_missing_from_checkpoint_is_initialized(tmp_path):
    state = load_file(os.path.join(GOLDEN, "model.safetensors"))
    missing = "model.transformer.blocks.1.ff_out.weight"
    del state[missing]
    save_file(state, tmp_path / "model.safetensors", {"format": "pt"})
    with open(os.path.join(GOLDEN, "config.json")) as f, open(tmp_path / "config.json", "w") as g:
        g.write(f.read())
    model, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {missing}
    assert 0.9 < _std_ratio(model.get_parameter(missing), 96**-0.5 / 2) < 1.1
    assert all(torch.equal(p, state[n]) for n, p in model.named_parameters() if n != missing)


# ---------------------------------------------------------------- clear errors
@pytest.mark.parametrize(
    "option",
    [
        {"block_type": "sequential"},
        {"activation_type": "swiglu"},
        {"layer_norm_type": "default"},
        {"alibi": True},
        {"include_bias": True},
        {"include_qkv_bias": True},
        {"attention_layer_norm": True},
        {"scale_logits": True},
        {"block_group_size": 2},
    ],
)
def test_unpublished_options_raise(option):
    config = LLaDAConfig.from_pretrained(GOLDEN, **option)
    with pytest.raises(NotImplementedError, match=next(iter(option))):
        LLaDAModelLM(config)


def test_bad_calls_raise():
    model = load()
    ids = golden()["a.input_ids"]
    with pytest.raises(ValueError, match="no KV cache"):
        model(ids, use_cache=True)
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="multi_query_attention"):
        _ = LLaDAConfig(n_heads=4, n_kv_heads=4, multi_query_attention=True).effective_n_kv_heads


# ---------------------------------------------------------------- tokenizer
def test_tiny_tokenizer_published_format(tmp_path):
    tokenizer = make_tiny_tokenizer(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    with open(tmp_path / "tokenizer_config.json") as f:
        assert json.load(f)["tokenizer_class"] == "PreTrainedTokenizerFast"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)  # no trust_remote_code
    ids = TINY_SPECIAL_TOKEN_IDS
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|startoftext|>", "<|endoftext|>", "<|endoftext|>",
    )  # fmt: skip
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == ids["<|endoftext|>"]
    assert tokenizer.convert_tokens_to_ids(["<|mdm_mask|>", "<|eot_id|>"]) == [ids["<|mdm_mask|>"], ids["<|eot_id|>"]]
    # The golden checkpoint's config speaks the tiny tokenizer's ids.
    config = AutoConfig.from_pretrained(GOLDEN)
    assert (config.mask_token_id, config.eos_token_id, config.pad_token_id) == (
        ids["<|mdm_mask|>"], ids["<|endoftext|>"], ids["<|endoftext|>"],
    )  # fmt: skip
    assert len(tokenizer) <= config.vocab_size

    assert tokenizer.chat_template == CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": " Hi "}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    encoded = tokenizer(prompt, add_special_tokens=False).input_ids
    assert encoded[:2] == [ids["<|startoftext|>"], ids["<|start_header_id|>"]] and ids["<|eot_id|>"] in encoded
    text = "the mask <|mdm_mask|> ends here<|eot_id|>"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_adapter_finds_special_ids_from_tiny_tokenizer_and_config(tmp_path):
    from trl_t3d.adapters import get_adapter

    tokenizer = make_tiny_tokenizer(str(tmp_path))
    model = load()
    adapter = get_adapter(model, tokenizer=tokenizer)
    ids = TINY_SPECIAL_TOKEN_IDS
    assert adapter.name == "llada"
    assert adapter.mask_token_id == ids["<|mdm_mask|>"]
    assert adapter.pad_token_id == ids["<|endoftext|>"]
    assert set(adapter.eos_token_ids) == {ids["<|endoftext|>"], ids["<|eot_id|>"]}
    assert set(adapter.resolve_lora_targets(model)) == testing.LLADA_LORA_TARGETS


# ---------------------------------------------------------------- the other direction (needs the original code)
@needs_original("TRL_T3D_LLADA_ORIGINAL", "LLaDA")
def test_original_code_loads_our_student(tmp_path):
    model = load()
    with torch.no_grad():  # a "trained" student: weights moved away from the golden ones
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    model.save_pretrained(tmp_path)
    expected = golden()
    with torch.no_grad():
        logits = model(expected["b.input_ids"], attention_mask=expected["b.attention_mask"]).logits
    inputs = {"input_ids": expected["b.input_ids"], "attention_mask": expected["b.attention_mask"]}
    save_file({**inputs, "logits": logits.contiguous()}, tmp_path / "expected_logits.safetensors")
    script = os.path.join(os.path.dirname(__file__), "golden", "gen_llada.py")
    command = [os.environ["TRL_T3D_TF4_PYTHON"], script, "--original", os.environ["TRL_T3D_LLADA_ORIGINAL"]]
    result = subprocess.run([*command, "--check-student", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout, file=sys.stderr)
