"""trl_t3d's native Dream against Dream's original code (golden fixtures from `tests/golden/gen_dream.py`).

`tests/golden/dream/` was written by the ORIGINAL remote code on transformers 4.57: its `config.json` (with
`auto_map`), weights, the inputs and fp32 logits of every forward case, RoPE tables, and a tiny tokenizer in the
published layout with the original tokenizer's encodings. Here everything loads without `trust_remote_code`.
"""

import json
import os
import shutil

import pytest
import torch
from golden._common import DREAM_ROPE_VARIANTS  # the variants gen_dream.py recorded
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

from trl_t3d.models import register_native_models
from trl_t3d.models.dream import DreamConfig, DreamModel, DreamTokenizer, load_tokenizer
from trl_t3d.models.dream.modeling_dream import DreamRotaryEmbedding, dream_attention_mask, flash_padding_mask

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden", "dream")
TOKENIZER_DIR = os.path.join(GOLDEN_DIR, "tokenizer")
# Keys transformers writes for its own bookkeeping (version, and dtype, which 4.57 and 5.x both rename).
BOOKKEEPING_KEYS = {"transformers_version", "dtype", "torch_dtype"}

register_native_models()


@pytest.fixture(scope="module")
def golden():
    return load_file(os.path.join(GOLDEN_DIR, "golden.safetensors"))


@pytest.fixture(scope="module")
def model():
    return AutoModel.from_pretrained(GOLDEN_DIR).eval()


def forward_cases(golden):
    """{case: kwargs} of the golden forward cases, rebuilt from the stored inputs."""
    cases = {}
    for key in golden:
        case, _, name = key.partition(".")
        if case in ("rope", "generate") or name in ("logits", "loss"):
            continue
        cases.setdefault(case, {})[name] = golden[key]
    cases["full"]["attention_mask"] = "full"  # the original's string form, stored as an input-less case
    return cases


CASES = [
    "no_mask",
    "key_mask_4d",
    "full",
    "padding_mask_2d",
    "pairwise_4d_generate_positions",
    "all_ones_2d",
    "labels",
]


def test_golden_dir_loads_natively_and_cleanly():
    model, info = AutoModel.from_pretrained(GOLDEN_DIR, output_loading_info=True)
    assert type(model) is DreamModel and type(model.config) is DreamConfig
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys, no errors
    # nothing re-initialised: every parameter is the file's tensor
    saved = load_file(os.path.join(GOLDEN_DIR, "model.safetensors"))
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert "model.layers.1.self_attn.q_proj.bias" in saved and "lm_head.weight" in saved
    assert model.config._attn_implementation == "sdpa"


def test_forward_cases_cover_the_original_conventions(golden):
    assert sorted(forward_cases(golden)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_the_original(model, golden, case):
    with torch.no_grad():
        out = model(**forward_cases(golden)[case], use_cache=False)
    expected = golden[f"{case}.logits"]
    assert out.logits.shape == expected.shape
    assert (out.logits - expected).abs().max().item() <= 1e-4
    if f"{case}.loss" in golden:
        assert abs(out.loss.item() - golden[f"{case}.loss"].item()) <= 1e-5


def test_mask_conventions_are_not_vacuous(golden):
    """The padded cases really differ from unmasked ones; 'full' and an all-ones mask are full attention."""
    assert torch.equal(golden["full.logits"], golden["no_mask.logits"])
    assert torch.equal(golden["all_ones_2d.logits"], golden["no_mask.logits"])
    real = slice(3, None)  # row 0 is left-padded by 3
    assert not torch.allclose(golden["key_mask_4d.logits"][0, real], golden["padding_mask_2d.logits"][0, real])


def test_positional_call_as_in_diffusion_generate(model, golden):
    """Dream's decoder calls `model(x, attention_mask, position_ids)` positionally."""
    case = forward_cases(golden)["pairwise_4d_generate_positions"]
    with torch.no_grad():
        logits = model(case["input_ids"], case["attention_mask"], case["position_ids"]).logits
    assert (logits - golden["pairwise_4d_generate_positions.logits"]).abs().max().item() <= 1e-4


def test_rope_tables_equal_the_original(golden):
    config = DreamConfig.from_pretrained(GOLDEN_DIR)
    for name, scaling in DREAM_ROPE_VARIANTS.items():
        rotary = DreamRotaryEmbedding(DreamConfig(**{**config.to_dict(), "rope_scaling": scaling}))
        probe = torch.zeros(1)
        for suffix, length in (("", 40), (".long", 200)):
            if f"rope.{name}{suffix}.cos" not in golden:
                continue
            cos, sin = rotary(probe, torch.arange(length)[None])
            assert torch.allclose(cos, golden[f"rope.{name}{suffix}.cos"], atol=1e-6), (name, suffix)
            assert torch.allclose(sin, golden[f"rope.{name}{suffix}.sin"], atol=1e-6), (name, suffix)
        if name not in ("default", "dynamic"):  # dynamic NTK only rescales beyond max_position_embeddings
            assert not torch.allclose(golden[f"rope.{name}.cos"], golden["rope.default.cos"]), name
    assert not torch.allclose(golden["rope.dynamic.long.cos"], golden["rope.default.long.cos"])


def test_sdpa_and_eager_agree(model, golden):
    eager = AutoModel.from_pretrained(GOLDEN_DIR, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    for case, kwargs in forward_cases(golden).items():
        with torch.no_grad():
            a, b = model(**kwargs).logits, eager(**kwargs).logits
        # fully masked query rows (the padding of a 2D mask) output zeros in both, as SDPA does
        assert (a - b).abs().max().item() <= 1e-4, case


def test_gradient_checkpointing_gives_the_same_grads(golden):
    kwargs = forward_cases(golden)["key_mask_4d"]
    labels = kwargs["input_ids"].clone()
    grads, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = AutoModel.from_pretrained(GOLDEN_DIR).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        assert model.is_gradient_checkpointing == checkpointing
        count, mlp = [0], model.model.layers[0].mlp
        mlp.forward = lambda x, forward=mlp.forward, count=count: count.__setitem__(0, count[0] + 1) or forward(x)
        loss = model(**kwargs, labels=labels).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        calls.append(count[0])
    assert calls == [1, 2]  # the checkpointed layer really ran again in backward
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)
    # the embedding row of the padding token gets no gradient (padding_idx, as in the original)
    assert grads[0]["model.embed_tokens.weight"][model.config.pad_token_id].abs().max() == 0


def test_bf16_device_map_forward(golden):
    model = AutoModel.from_pretrained(GOLDEN_DIR, device_map="cpu", dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    kwargs = forward_cases(golden)["key_mask_4d"]
    with torch.no_grad():
        logits = model(**kwargs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    expected = golden["key_mask_4d.logits"]
    assert (logits.float() - expected).abs().max().item() <= 0.1 * expected.abs().max().item()


def test_config_round_trip(tmp_path):
    config = AutoConfig.from_pretrained(GOLDEN_DIR)
    assert type(config) is DreamConfig and config.model_type == "Dream"
    config.save_pretrained(tmp_path)
    with open(os.path.join(GOLDEN_DIR, "config.json")) as f:
        published = json.load(f)
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    drop = lambda d: {k: v for k, v in d.items() if k not in BOOKKEEPING_KEYS}  # noqa: E731
    assert drop(written) == drop(published)
    assert written["auto_map"] == {
        "AutoConfig": "configuration_dream.DreamConfig",
        "AutoModel": "modeling_dream.DreamModel",
    }


def test_published_key_forms_are_kept(tmp_path):
    """A transformers-4 style config (torch_dtype, legacy rope 'type') reads and writes back the same keys."""
    with open(os.path.join(GOLDEN_DIR, "config.json")) as f:
        published = json.load(f)
    published.pop("dtype")
    published.update({"torch_dtype": "bfloat16", "rope_scaling": {"type": "linear", "factor": 2.0}})
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "config.json", "w") as f:
        json.dump(published, f)
    config = AutoConfig.from_pretrained(tmp_path / "in")
    assert config.rope_scaling == {"type": "linear", "factor": 2.0, "rope_type": "linear"}  # as the original records
    assert config.rope_theta == 1e6 and config.sliding_window is None
    config.save_pretrained(tmp_path / "out")
    with open(tmp_path / "out" / "config.json") as f:
        written = json.load(f)
    assert set(written) - BOOKKEEPING_KEYS == set(published) - BOOKKEEPING_KEYS
    assert written["rope_scaling"]["factor"] == 2.0 and "rope_parameters" not in written


def test_state_dict_round_trip(model, tmp_path, golden):
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(
        load_file(os.path.join(GOLDEN_DIR, "model.safetensors"))
    )
    # Dream's own from_pretrained requires generation_config.json; the special ids are the config's
    with open(tmp_path / "generation_config.json") as f:
        generation_config = json.load(f)
    assert generation_config["pad_token_id"] == model.config.pad_token_id
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    for name, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name
    kwargs = forward_cases(golden)["key_mask_4d"]
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(**kwargs).logits, model(**kwargs).logits)


def test_attention_mask_errors_name_the_fix():
    with pytest.raises(ValueError, match="additive mask"):
        dream_attention_mask(torch.zeros(1, 1, 2, 2).masked_fill(torch.eye(2, dtype=torch.bool), float("-inf")))
    with pytest.raises(ValueError, match="only string Dream accepts is 'full'"):
        dream_attention_mask("causal")
    with pytest.raises(ValueError, match="2D padding mask"):
        dream_attention_mask(torch.ones(1, 1, 1, 2, 2))
    with pytest.raises(TypeError, match="None, 'full' or a tensor"):
        dream_attention_mask([[1, 1]])


def test_attention_mask_forms():
    valid = torch.tensor([[0, 1, 1], [1, 1, 1]])
    pairwise = dream_attention_mask(valid)
    assert pairwise.shape == (2, 1, 3, 3) and pairwise.dtype == torch.bool
    assert not pairwise[0, 0, 0].any() and pairwise[0, 0, 1].tolist() == [False, True, True]
    assert dream_attention_mask(torch.ones(2, 3)) is None and dream_attention_mask("full") is None
    three_d = dream_attention_mask(valid[:, None, :].expand(-1, 3, -1).float())
    assert three_d.shape == (2, 1, 3, 3) and three_d[0, 0, 0].tolist() == [False, True, True]
    # flash attention takes the 2D key mask of either padding form
    key_only = valid.bool()[:, None, None, :].expand(-1, 1, 3, -1)
    assert flash_padding_mask(key_only).tolist() == flash_padding_mask(pairwise).tolist() == valid.tolist()
    with pytest.raises(ValueError, match="padding masks only"):
        flash_padding_mask(torch.eye(3, dtype=torch.bool)[None, None])


def test_outputs_cache_and_logits_to_keep(model, golden):
    ids = golden["no_mask.input_ids"]
    assert model.config.use_cache  # as published; still no cache unless asked (the original never returned one)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        assert out.cache is None and len(out.hidden_states) == model.config.num_hidden_layers + 1
        assert model(ids, use_cache=True).cache.get_seq_length() == ids.shape[1]
        last = model(ids, num_logits_to_keep=3).logits  # the original's argument name
    assert torch.equal(last, model(ids, logits_to_keep=3).logits) and last.shape[1] == 3
    torch.testing.assert_close(last, out.logits[:, -3:])


def test_random_init_and_tied_embeddings():
    config = DreamConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=3, mask_token_id=4, tie_word_embeddings=True,
    )  # fmt: skip
    model = DreamModel(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.embed_tokens.weight[3].abs().max() == 0  # padding row
    std = model.model.layers[0].mlp.up_proj.weight.std().item()
    assert 0.01 < std < 0.03 and model.model.layers[0].self_attn.q_proj.bias.abs().max() == 0
    assert torch.equal(model.model.norm.weight, torch.ones(32))
    with pytest.raises(ValueError, match="set a pad_token_id below vocab_size"):
        DreamModel(DreamConfig(**{**config.to_dict(), "pad_token_id": 151643}))
    with pytest.raises(ValueError, match="divisible by `num_attention_heads`"):
        DreamConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="multiple of `num_key_value_heads`"):
        DreamConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=3)


def test_unknown_rope_type_is_a_clear_error():
    config = DreamConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, rope_scaling={"rope_type": "nope", "factor": 2.0}
    )
    with pytest.raises(ValueError, match="rope_scaling type 'nope' is unknown"):
        DreamRotaryEmbedding(config)


def test_generate_cases_are_complete(golden):
    """The original `diffusion_generate` outputs recorded for the native decoder (issue 11) are all there."""
    with open(os.path.join(GOLDEN_DIR, "generate_cases.json")) as f:
        records = json.load(f)["cases"]
    assert len(records) == 12 and {r["generation_config"]["alg"] for r in records} == {
        "maskgit_plus",
        "topk_margin",
        "entropy",
    }
    for record in records:
        prompt = golden[record["input_ids"]]
        sequences, history = golden[record["sequences"]], golden[record["history"]]
        config = record["generation_config"]
        assert sequences.shape == (prompt.shape[0], prompt.shape[1] + config["max_new_tokens"])
        assert torch.equal(sequences[:, : prompt.shape[1]], prompt) and torch.equal(history[-1], sequences)
        assert history.shape[0] == config["steps"] and not (sequences == config["mask_token_id"]).any()


# --- tokenizer -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_cases():
    with open(os.path.join(GOLDEN_DIR, "tokenizer_cases.json")) as f:
        return json.load(f)


def test_published_tokenizer_format_loads_natively():
    with open(os.path.join(TOKENIZER_DIR, "tokenizer_config.json")) as f:
        tokenizer_config = json.load(f)
    assert tokenizer_config["tokenizer_class"] == "DreamTokenizer" and "auto_map" in tokenizer_config
    assert not any(name.endswith(".py") for name in os.listdir(TOKENIZER_DIR))
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)  # no trust_remote_code, no .py file to run
    assert type(tokenizer) is DreamTokenizer


def test_special_tokens_are_the_published_ones(tokenizer_cases):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    assert tokenizer.mask_token == "<|mask|>" and tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    for name, expected in tokenizer_cases["special_tokens"].items():
        assert getattr(tokenizer, name) == expected["token"] and getattr(tokenizer, f"{name}_id") == expected["id"]
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer_cases["added_tokens"]} == tokenizer_cases[
        "added_tokens"
    ]
    assert (
        tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer_cases["added_tokens"]["<|im_end|>"]
    )  # end of turn
    assert len(tokenizer) == tokenizer_cases["len"]
    config = AutoConfig.from_pretrained(GOLDEN_DIR)
    assert (tokenizer.mask_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (
        config.mask_token_id,
        config.pad_token_id,
        config.eos_token_id,
    )


def test_tokenizer_encodes_as_the_original(tokenizer_cases):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    for case in tokenizer_cases["encode"]:
        assert tokenizer(case["text"])["input_ids"] == case["input_ids"], case["text"]
    for case in tokenizer_cases["decode"]:
        assert tokenizer.decode(case["input_ids"]) == case["text"]
        assert tokenizer.decode(case["input_ids"], skip_special_tokens=True) == case["skip_special_tokens"]
    for case in tokenizer_cases["chat"]:
        assert (
            tokenizer.apply_chat_template(case["messages"], tokenize=False, add_generation_prompt=True) == case["text"]
        )
        ids = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        assert ids == case["input_ids"]


def test_tokenizer_in_hub_layout_and_round_trip(tmp_path, tokenizer_cases):
    """Tokenizer files beside config.json (a Hub repo), then saved by us (adds tokenizer.json) and reloaded."""
    hub = tmp_path / "hub"
    shutil.copytree(TOKENIZER_DIR, hub)
    shutil.copy(os.path.join(GOLDEN_DIR, "config.json"), hub)
    tokenizer = AutoTokenizer.from_pretrained(hub)
    assert type(tokenizer) is DreamTokenizer
    tokenizer.save_pretrained(tmp_path / "saved")
    for loaded in (AutoTokenizer.from_pretrained(tmp_path / "saved"), load_tokenizer(TOKENIZER_DIR)):
        assert type(loaded) is DreamTokenizer and loaded.mask_token_id == tokenizer.mask_token_id
        for case in tokenizer_cases["encode"]:
            assert loaded(case["text"])["input_ids"] == case["input_ids"]
