"""Each tiny family fixture behaves as the family it stands for."""

import json
import os

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import trl_t3d
from trl_t3d import testing
from trl_t3d.adapters import get_adapter
from trl_t3d.adapters.block_diffusion import additive_mask, block_ids


def _first_position_logits(model, ids, **kwargs):
    return model(input_ids=ids, **kwargs).logits[0, 0]


def test_version_and_public_api():
    """The version the package says is the one installed (what model cards record), and the public names resolve."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    from trl_t3d.hub import trl_t3d_version

    assert str(Version(trl_t3d.__version__)) == trl_t3d.__version__  # a PEP 440 version, written canonically
    try:
        installed = version("trl-t3d")
    except PackageNotFoundError:  # a source checkout on PYTHONPATH
        installed = None
    if installed is not None:
        assert installed == trl_t3d.__version__, "reinstall: the installed metadata is of another version"
    assert trl_t3d_version() == trl_t3d.__version__
    # the names the README and DESIGN document, eager and lazy, are importable from the top level
    names = [
        "DDOConfig", "DDOTrainer", "collect_trajectories", "evaluate_few_step", "load_diffusion_lm", "DiffusionLM",
        "AutoModelForDiffusionLM", "DiffusionGenerationConfig", "diffusion_generate", "Task", "get_adapter",
        "register_adapter", "push_student_to_hub", "push_trajectories_to_hub",
    ]  # fmt: skip
    missing = [name for name in names if not hasattr(trl_t3d, name)]
    assert not missing, missing
    assert trl_t3d.DDOTrainer.__name__ == "DDOTrainer" and callable(trl_t3d.collect_trajectories)
    with pytest.raises(AttributeError, match="has no attribute 'DDOTrainr'"):
        trl_t3d.DDOTrainr  # noqa: B018


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


def test_llada_is_native_with_llada_module_names(llada_dir):
    with open(os.path.join(llada_dir, "config.json")) as f:
        saved = json.load(f)
    assert saved["model_type"] == "llada" and saved["auto_map"] == testing.LLADA_AUTO_MAP  # the published layout
    model = AutoModel.from_pretrained(llada_dir).eval()  # no trust_remote_code: our native class
    assert type(model).__name__ == "LLaDAModelLM" and type(model).__module__.startswith("trl_t3d.models.llada")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert testing.LLADA_LORA_TARGETS <= names
    assert "o_proj" not in names  # a Llama-style target list would silently miss most layers
    a, b = torch.tensor([[10, 11, 12, 13]]), torch.tensor([[10, 11, 12, 14]])
    assert not torch.allclose(_first_position_logits(model, a), _first_position_logits(model, b))
    adapter = get_adapter(model)
    assert adapter.name == "llada" and adapter.resolve_lora_targets(model) == list(adapter.lora_target_modules)


def test_remote_code_model_of_no_known_family_uses_the_generic_adapter(remote_mlm_dir):
    model = AutoModel.from_pretrained(remote_mlm_dir, trust_remote_code=True).eval()
    assert type(model).__name__ == "RemoteMLMModel" and model.config.model_type == "toy_remote_mlm"
    a, b = torch.tensor([[10, 11, 12, 13]]), torch.tensor([[10, 11, 12, 14]])
    assert not torch.allclose(_first_position_logits(model, a), _first_position_logits(model, b))
    assert get_adapter(model).name == "generic"


@pytest.mark.parametrize(
    "fixture, auto_class, model_type, auto_map, class_name",
    [
        ("dream_dir", AutoModel, "Dream", testing.DREAM_AUTO_MAP, "DreamModel"),
        ("sdar_dir", AutoModelForCausalLM, "sdar", testing.SDAR_AUTO_MAP, "SDARForCausalLM"),
    ],
)
def test_dream_and_sdar_are_native_in_the_hub_layout(request, fixture, auto_class, model_type, auto_map, class_name):
    directory = request.getfixturevalue(fixture)
    with open(os.path.join(directory, "config.json")) as f:
        saved = json.load(f)
    assert saved["model_type"] == model_type and saved["auto_map"] == auto_map
    model = auto_class.from_pretrained(directory).eval()  # no trust_remote_code: our native class
    assert type(model).__name__ == class_name and type(model).__module__.startswith("trl_t3d.models.")


def test_dream_logits_are_aligned_by_the_adapter(dream_dir):
    """Dream's logit at i predicts token i + 1 (it was trained from an AR model); the adapter realigns them."""
    dream = AutoModel.from_pretrained(dream_dir).eval()
    adapter = get_adapter(dream)
    assert adapter.name == "dream" and adapter.logits_shift == 1
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    raw = dream(input_ids=ids).logits
    aligned = adapter.forward(dream, ids)
    torch.testing.assert_close(aligned[:, 1:], raw[:, :-1])


def test_sdar_is_block_causal(sdar_dir):
    model = AutoModelForCausalLM.from_pretrained(sdar_dir).eval()
    assert model.config.model_type == "sdar"
    a, b = torch.tensor([[10, 11, 12, 13]]), torch.tensor([[10, 11, 12, 14]])
    blocks = block_ids(0, 4, 2)  # two blocks: [0, 1] and [2, 3]
    allowed = (blocks[None, :] <= blocks[:, None])[None]
    for mask in (allowed[:, None], additive_mask(allowed, torch.float32)):  # SDAR's boolean form, and additive
        kwargs = {"attention_mask": mask, "position_ids": torch.arange(4)[None]}
        # Position 0 does not see the next block, but does see its own block.
        first_a = _first_position_logits(model, a, **kwargs)
        torch.testing.assert_close(first_a, _first_position_logits(model, b, **kwargs))
        c = torch.tensor([[10, 15, 12, 13]])
        assert not torch.allclose(first_a, _first_position_logits(model, c, **kwargs))
    # Without a mask SDAR attends to everything (as its original code): the block structure comes from the mask.
    assert not torch.allclose(_first_position_logits(model, a), _first_position_logits(model, b))
    assert get_adapter(model).block_causal


def test_generic_model_builds_in_memory(tokenizer):
    model = testing.make_generic_mlm(tokenizer)
    assert model.config.vocab_size == len(tokenizer)


def test_llada2_is_block_causal_with_bool_or_additive_masks(llada2_dir):
    """LLaDA2 (`llada2_moe`) is block diffusion: the block-diffusion adapter drives it with LLaDA2's own mask forms."""
    model = AutoModelForCausalLM.from_pretrained(llada2_dir).eval()  # the native class
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
