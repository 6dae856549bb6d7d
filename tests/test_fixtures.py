"""Each tiny family stand-in behaves as the family it claims to imitate."""

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import trl_t3d
from trl_t3d import testing
from trl_t3d.adapters import get_adapter
from trl_t3d.adapters.block_diffusion import additive_mask, block_ids


def _first_position_logits(model, ids, **kwargs):
    return model(input_ids=ids, **kwargs).logits[0, 0]


def test_version_and_public_api():
    assert isinstance(trl_t3d.__version__, str) and trl_t3d.__version__.count(".") == 2


def test_tokenizer_roundtrip_and_specials(tokenizer, tmp_path):
    text = "12+34=46\nperm:abc"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tokenizer.decode(ids) == text
    specials = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id}
    assert len(specials) == 3 and tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1="}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|user|>1+1=<|assistant|>"
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (
        reloaded(text, add_special_tokens=False)["input_ids"] == ids
        and reloaded.mask_token_id == tokenizer.mask_token_id
    )


def test_generic_mlm_is_bidirectional(generic_dir):
    model = AutoModelForCausalLM.from_pretrained(generic_dir).eval()
    assert model.config.is_causal is False and model.config.mask_token_id is not None
    a, b = torch.tensor([[10, 11, 12, 13]]), torch.tensor([[10, 11, 12, 14]])
    assert not torch.allclose(_first_position_logits(model, a), _first_position_logits(model, b))
    assert get_adapter(model).name == "generic"


def test_llada_like_remote_code(llada_dir):
    model = AutoModel.from_pretrained(llada_dir, trust_remote_code=True).eval()
    assert type(model).__name__ == "LLaDALikeModelLM" and model.config.model_type == "llada"
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"} <= names
    assert "o_proj" not in names  # a Llama-style target list would silently miss most layers
    a, b = torch.tensor([[10, 11, 12, 13]]), torch.tensor([[10, 11, 12, 14]])
    assert not torch.allclose(_first_position_logits(model, a), _first_position_logits(model, b))
    adapter = get_adapter(model)
    assert adapter.name == "llada" and adapter.resolve_lora_targets(model) == list(adapter.lora_target_modules)


def test_dream_like_logits_are_shifted(dream_dir):
    dream = AutoModel.from_pretrained(dream_dir, trust_remote_code=True).eval()
    cfg = {k: v for k, v in dream.config.to_dict().items() if k not in ("model_type", "auto_map", "architectures")}
    plain = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    plain.config.is_causal = False
    plain.load_state_dict(dream.state_dict())
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    shifted, unshifted = dream(input_ids=ids).logits, plain(input_ids=ids).logits
    torch.testing.assert_close(shifted[:, :-1], unshifted[:, 1:])  # the logit at i predicts token i + 1
    assert not torch.allclose(shifted[:, 1:], unshifted[:, 1:])
    assert get_adapter(dream).name == "dream"


def test_sdar_like_is_block_causal(sdar_dir):
    model = AutoModelForCausalLM.from_pretrained(sdar_dir, trust_remote_code=True).eval()
    assert model.config.model_type == "sdar"
    a, b = torch.tensor([[10, 11, 12, 13]]), torch.tensor([[10, 11, 12, 14]])
    blocks = block_ids(0, 4, 2)  # two blocks: [0, 1] and [2, 3]
    allowed = (blocks[None, :] <= blocks[:, None])[None]
    kwargs = {"attention_mask": additive_mask(allowed, torch.float32), "position_ids": torch.arange(4)[None]}
    # Position 0 does not see the next block, but does see its own block.
    torch.testing.assert_close(_first_position_logits(model, a, **kwargs), _first_position_logits(model, b, **kwargs))
    c = torch.tensor([[10, 15, 12, 13]])
    assert not torch.allclose(_first_position_logits(model, a, **kwargs), _first_position_logits(model, c, **kwargs))
    # With a full mask, the same model sees everything: the block structure comes from the mask.
    full = additive_mask(torch.ones(1, 4, 4, dtype=torch.bool), torch.float32)
    assert not torch.allclose(
        _first_position_logits(model, a, attention_mask=full), _first_position_logits(model, b, attention_mask=full)
    )
    assert get_adapter(model).block_causal


def test_generic_model_builds_in_memory(tokenizer):
    model = testing.make_generic_mlm(tokenizer)
    assert model.config.vocab_size == len(tokenizer)


def test_llada2_is_block_causal_with_bool_or_additive_masks(llada2_dir):
    """LLaDA2 (`llada2_moe`) is block diffusion: the block-diffusion adapter drives it with LLaDA2's own mask forms."""
    model = AutoModelForCausalLM.from_pretrained(llada2_dir, trust_remote_code=True).eval()
    adapter = get_adapter(model)
    assert adapter.name == "llada2" and adapter.block_causal and adapter.default_block_length == 32
    assert adapter.resolve_lora_targets(model) == list(adapter.lora_target_modules)
    ids = torch.tensor([[10, 11, 12, 13]])
    blocks = block_ids(0, 4, 2)
    allowed = (blocks[None, :] <= blocks[:, None])[None]
    positions = torch.arange(4)[None]
    as_bool = model(input_ids=ids, attention_mask=allowed[:, None], position_ids=positions).logits
    additive = model(
        input_ids=ids, attention_mask=additive_mask(allowed, torch.float32), position_ids=positions
    ).logits
    torch.testing.assert_close(as_bool, additive)
    changed = model(
        input_ids=torch.tensor([[10, 11, 12, 14]]), attention_mask=allowed[:, None], position_ids=positions
    ).logits
    torch.testing.assert_close(as_bool[:, :2], changed[:, :2])  # the first block does not see the second
    assert not torch.allclose(as_bool[:, 2:], changed[:, 2:])
