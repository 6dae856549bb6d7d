"""The native SDAR classes against SDAR's original code (golden fixtures from `tests/golden/gen_sdar.py`)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from trl_t3d.models import register_native_models
from trl_t3d.models.sdar import SDARConfig, SDARForCausalLM, SDARModel, make_tiny_tokenizer
from trl_t3d.models.sdar.modeling_sdar import SDARRotaryEmbedding

register_native_models()

GOLDEN = Path(__file__).parent / "golden" / "sdar"
UNTIED = GOLDEN / "untied"
TOL = 1e-4
BOOKKEEPING = {"transformers_version", "torch_dtype", "dtype"}
KV_STEPS = [("kv_prefill", True), ("kv_block0_step", False), ("kv_block0_store", True), ("kv_block1_step", False)]


@pytest.fixture(scope="module")
def golden():
    return load_file(str(GOLDEN / "golden.safetensors"))


@pytest.fixture(scope="module")
def meta():
    with safe_open(str(GOLDEN / "golden.safetensors"), "pt") as f:
        return f.metadata()


def load(path=GOLDEN, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


@pytest.fixture(scope="module")
def model():
    return load()


def max_delta(a, b):
    return (a.float() - b.float()).abs().max().item()


def block_forward(model, golden, mask_name="block_bool", **kwargs):
    return model(
        input_ids=golden["block.input_ids"],
        attention_mask=golden[f"{mask_name}.attention_mask"],
        position_ids=golden["block.position_ids"],
        use_cache=False,
        **kwargs,
    )


def run_kv_steps(model, golden, cache=None):
    """SDAR's generate.py calls: prefill (store), denoise (read only), store the finished block, denoise."""
    cache = DynamicCache() if cache is None else cache
    logits = {}
    for name, store in KV_STEPS:
        out = model(
            input_ids=golden[f"{name}.input_ids"],
            attention_mask=golden[f"{name}.attention_mask"],
            position_ids=golden[f"{name}.position_ids"],
            past_key_values=cache,
            use_cache=True,
            store_kv=store,
        )
        logits[name] = out.logits
        assert cache.get_seq_length() == golden[f"{name}.cache_length"].item(), name
    return logits


# ------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("path", [GOLDEN, UNTIED], ids=["tied", "untied"])
def test_original_checkpoint_loads_without_remote_code(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert type(model) is SDARForCausalLM and type(model.config) is SDARConfig
    assert not any(info.values()), info  # no missing, unexpected, mismatched (re-initialized) keys
    tied = json.loads((path / "config.json").read_text())["tie_word_embeddings"]
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) == tied
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved == set(model.state_dict()) - ({"lm_head.weight"} if tied else set())
    base, info = AutoModel.from_pretrained(path, output_loading_info=True)  # the head is not part of it
    assert type(base) is SDARModel and info["unexpected_keys"] <= {"lm_head.weight"}
    assert not (info["missing_keys"] or info["mismatched_keys"] or info["error_msgs"]), info


def test_untied_logits_equal_original():
    golden = load_file(str(UNTIED / "golden.safetensors"))
    with torch.no_grad():
        out = load(UNTIED)(input_ids=golden["no_mask.input_ids"], use_cache=False)
    assert max_delta(out.logits, golden["no_mask.logits"]) <= TOL


# ------------------------------------------------------------------------------------------------ golden logits
def test_no_mask_is_bidirectional_and_equal(model, golden):
    with torch.no_grad():
        out = model(input_ids=golden["no_mask.input_ids"], labels=golden["no_mask.labels"], use_cache=False)
    assert max_delta(out.logits, golden["no_mask.logits"]) <= TOL
    assert abs(out.loss.item() - golden["no_mask.loss"].item()) <= TOL  # same-position CE, -100 ignored


def test_padding_mask_equal(model, golden):
    mask = golden["padding_2d.attention_mask"]
    with torch.no_grad():
        out = model(
            input_ids=golden["padding_2d.input_ids"],
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        )
    assert max_delta(out.logits, golden["padding_2d.logits"]) <= TOL


@pytest.mark.parametrize("mask_name", ["block_int", "block_bool"])
def test_block_mask_with_position_ids_equal(model, golden, mask_name):
    with torch.no_grad():
        out = block_forward(model, golden, mask_name)
    assert max_delta(out.logits, golden[f"{mask_name}.logits"]) <= TOL


def test_kv_cache_path_equal(model, golden):
    with torch.no_grad():
        logits = run_kv_steps(model, golden)
    for name, _ in KV_STEPS:
        assert max_delta(logits[name], golden[f"{name}.logits"]) <= TOL, name


def test_cache_path_equals_one_full_forward(model, golden):
    """The block denoised from the cache sees what it sees in one forward over `[prompt, block0, block1]`."""
    key_valid = golden["kv.key_valid"]
    ids = torch.cat([golden[f"{name}.input_ids"] for name in ("kv_prefill", "kv_block0_store", "kv_block1_step")], 1)
    blocks = (torch.arange(ids.shape[1]) - 8) // 4
    allowed = (blocks[None, :] <= blocks[:, None])[None] & key_valid[:, None, :].bool()
    with torch.no_grad():
        full = model(
            input_ids=ids, attention_mask=allowed[:, None], position_ids=(key_valid.cumsum(-1) - 1).clamp(min=0)
        )
        cached = run_kv_steps(model, golden)["kv_block1_step"]
    assert max_delta(full.logits[:, 12:], cached) <= 1e-5


def test_rope_scaling_variants_equal_original(golden, meta):
    base = json.loads((GOLDEN / "config.json").read_text())
    positions = golden["rope.position_ids"]
    x = torch.zeros(1)
    for name, scaling in json.loads(meta["rope_variants"]).items():
        config = SDARConfig(
            **base | {"rope_scaling": scaling, "max_position_embeddings": int(meta["rope_max_position_embeddings"])}
        )
        rotary = SDARRotaryEmbedding(config)
        for part, ids in (("short", positions[:, :24]), ("long", positions)):  # the long call moves dynamic/longrope
            cos, sin = rotary(x, ids)
            assert max_delta(cos, golden[f"rope.{name}.{part}_cos"]) <= 1e-6, (name, part)
            assert max_delta(sin, golden[f"rope.{name}.{part}_sin"]) <= 1e-6, (name, part)


# ------------------------------------------------------------------------------------------------ backends, dtypes
def test_eager_equals_sdpa(model, golden):
    eager = load(attn_implementation="eager")
    assert eager.config._attn_implementation == "eager" and model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert max_delta(block_forward(eager, golden).logits, block_forward(model, golden).logits) <= TOL
        ours, theirs = run_kv_steps(eager, golden), run_kv_steps(model, golden)
    assert all(max_delta(ours[name], theirs[name]) <= TOL for name, _ in KV_STEPS)


def test_bf16_forward_close_to_fp32(model, golden):
    bf16 = load(device_map="cpu", dtype=torch.bfloat16)
    assert bf16.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        low, full = block_forward(bf16, golden).logits, block_forward(model, golden).logits
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert max_delta(low, full) <= 0.05 * full.abs().max().item()


def test_gradient_checkpointing_gives_the_same_grads(golden):
    grads = {}
    for checkpointing in (False, True):
        model = load().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        out = block_forward(model, golden, labels=golden["block.input_ids"])
        out.loss.backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        assert grad.abs().sum() > 0, name
        assert max_delta(grads[True][name], grad) <= 1e-6, name


# ------------------------------------------------------------------------------------------------ round trips
def test_config_round_trip(tmp_path):
    config = AutoConfig.from_pretrained(GOLDEN)
    assert type(config) is SDARConfig and config.auto_map["AutoModelForCausalLM"] == "modeling_sdar.SDARForCausalLM"
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    published = json.loads((GOLDEN / "config.json").read_text())
    assert {k: v for k, v in saved.items() if k not in BOOKKEEPING} == {
        k: v for k, v in published.items() if k not in BOOKKEEPING
    }


def test_state_dict_round_trip(model, golden, tmp_path):
    changed = load()
    with torch.no_grad():
        for param in changed.parameters():
            param.mul_(1.5)
    changed.save_pretrained(tmp_path)
    with (
        safe_open(str(tmp_path / "model.safetensors"), "pt") as ours,
        safe_open(str(GOLDEN / "model.safetensors"), "pt") as theirs,
    ):
        assert set(ours.keys()) == set(theirs.keys())  # parameter names as the original writes them
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), changed.state_dict().values()))
    with torch.no_grad():
        assert max_delta(block_forward(reloaded.eval(), golden).logits, block_forward(changed, golden).logits) == 0
        assert max_delta(block_forward(changed, golden).logits, block_forward(model, golden).logits) > 0.1


# ------------------------------------------------------------------------------------------------ wrong inputs
def test_additive_masks_are_read_as_transformers_does(model, golden):
    """No positive entry: 0 = visible, negative = hidden (the original would hide every key, attending uniformly)."""
    allowed = golden["block_bool.attention_mask"]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out = block_forward(model, golden | {"block_bool.attention_mask": additive})
        assert max_delta(out.logits, golden["block_bool.logits"]) <= TOL
        ids = golden["no_mask.input_ids"]
        zeros = model(input_ids=ids, attention_mask=torch.zeros(ids.shape), use_cache=False)
    assert max_delta(zeros.logits, golden["no_mask.logits"]) <= TOL


def test_mask_too_short_for_the_cache_is_rejected(model, golden):
    cache = DynamicCache()
    model(input_ids=golden["kv_prefill.input_ids"], past_key_values=cache, use_cache=True, store_kv=True)
    with pytest.raises(ValueError, match="one mask column per cached and new position"):
        model(
            input_ids=golden["kv_block0_step.input_ids"],
            attention_mask=golden["kv_block0_step.attention_mask"][..., 4:],
            past_key_values=cache,
            use_cache=True,
        )


def test_two_caches_are_rejected(model, golden):
    with pytest.raises(ValueError, match="Pass the KV cache once"):
        model(input_ids=golden["no_mask.input_ids"], past_key_values=DynamicCache(), cache=DynamicCache())


def test_store_kv_defaults_to_use_cache(model, golden):
    """transformers' convention when `store_kv` is not given: `use_cache=True` extends the cache (trl_t3d's adapter
    relies on it), and `DynamicCache(config=...)` keeps every layer in full (SDAR never slides its window)."""
    cache = DynamicCache(config=model.config)
    ids = golden["kv_prefill.input_ids"]
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == ids.shape[1]
    model(input_ids=ids, past_key_values=cache, use_cache=False)
    assert cache.get_seq_length() == ids.shape[1]
    assert model.config.layer_types == ["full_attention"] * model.config.num_hidden_layers


# ------------------------------------------------------------------------------------------------ tokenizer
def test_tiny_tokenizer_loads_natively_with_published_special_tokens(tmp_path, meta):
    path = make_tiny_tokenizer(tmp_path / "tok")
    published = json.loads((path / "tokenizer_config.json").read_text())
    assert published["tokenizer_class"] == "Qwen2Tokenizer" and "AutoTokenizer" in published["auto_map"]
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in path.iterdir()}
    tok = AutoTokenizer.from_pretrained(path)  # no trust_remote_code, although auto_map names remote files
    assert type(tok).__name__ == "Qwen2Tokenizer" and len(tok) == 320
    assert (tok.mask_token, tok.pad_token, tok.eos_token) == ("<|MASK|>", "<|endoftext|>", "<|im_end|>")
    assert tok.mask_token_id == int(meta["mask_token_id"]) == len(tok) - 1  # last, as 151669 in the real vocabulary
    config = json.loads((GOLDEN / "config.json").read_text())
    assert (tok.pad_token_id, tok.eos_token_id) == (config["bos_token_id"], config["eos_token_id"])
    text = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}], add_generation_prompt=True)
    assert tok.decode(text["input_ids"] if isinstance(text, dict) else text).startswith("<|im_start|>user\n")
    ids = tok("the answer<|MASK|><|im_end|>")["input_ids"]
    assert ids[-2:] == [tok.mask_token_id, tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "the answer"


def test_hub_layout_directory_loads_model_and_tokenizer(tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((GOLDEN / name).read_bytes())
    make_tiny_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = load(tmp_path)
    with torch.no_grad():
        logits = model(**tok(["What is 1 + 2 = "], return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok)


# ------------------------------------------------------------------------------------------------ trl_t3d's decoder
def test_block_decoding_with_cache_equals_without(model, tmp_path):
    """trl_t3d's block-diffusion decoder over the native class, with the exact block KV cache and without it."""
    from trl_t3d import diffusion_generate

    tok = AutoTokenizer.from_pretrained(make_tiny_tokenizer(tmp_path))
    batch = tok(["What is 1 + 2 =", "the"], return_tensors="pt", padding=True, padding_side="left")
    outs = {
        use_cache: diffusion_generate(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            processing_class=tok,
            max_new_tokens=8,
            block_length=4,
            stop_at_eos=False,
            use_cache=use_cache,
            return_dict_in_generate=True,
            output_step_map=True,
        )
        for use_cache in (True, False)
    }
    assert torch.equal(outs[True].sequences, outs[False].sequences)
    assert torch.equal(outs[True].step_map, outs[False].step_map)
