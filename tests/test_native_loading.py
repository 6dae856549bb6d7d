"""Checkpoints written by the families' original code load with `AutoModelForDiffusionLM` and no remote code.

The golden directories (tests/golden/<family>/) hold `config.json` (with `auto_map`) and weights exactly as the
original code saved them. Here they get the original code's file names beside them, as on the Hub, but files that
raise when imported: loading must never run them unless the user opts in with `use_remote_code=True`.
"""

import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from trl_t3d import AutoModelForDiffusionLM, testing

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
# family -> (golden case with no mask, the model class that must load)
FAMILIES = {"llada": ("a", "LLaDAModelLM"), "dream": ("no_mask", "DreamModel"), "sdar": ("no_mask", "SDARForCausalLM")}
TRAP = 'raise RuntimeError("the checkpoint\'s own code ran")\n'


def hub_style_dir(tmp_path, family):
    """The golden checkpoint plus trap files under every name its `auto_map` gives, as a Hub repo would have."""
    from trl_t3d.models.loading import original_code_files

    directory = tmp_path / family
    directory.mkdir()
    for name in os.listdir(os.path.join(GOLDEN, family)):
        if name == "config.json" or name.startswith("model"):
            shutil.copy(os.path.join(GOLDEN, family, name), directory / name)
    from transformers import PretrainedConfig

    config = PretrainedConfig.from_pretrained(str(directory))
    files = original_code_files(config)
    assert files, "the golden config keeps the published auto_map"
    for name in files:
        (directory / name).write_text(TRAP)
    return str(directory), files


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_original_checkpoint_loads_natively_with_the_original_logits(tmp_path, caplog, family, trust_remote_code):
    directory, _ = hub_style_dir(tmp_path, family)
    case, class_name = FAMILIES[family]
    golden = load_file(os.path.join(GOLDEN, family, "golden.safetensors"))
    with caplog.at_level(logging.INFO, logger="trl_t3d.models.loading"):
        model = AutoModelForDiffusionLM.from_pretrained(directory, trust_remote_code=trust_remote_code)
    assert type(model).__name__ == class_name and type(model).__module__.startswith("trl_t3d.models.")
    assert ("native" in caplog.text) == trust_remote_code  # one log line says the native class was used
    with torch.no_grad():
        logits = model(input_ids=golden[f"{case}.input_ids"]).logits
    assert (logits - golden[f"{case}.logits"]).abs().max() <= 1e-4


def test_use_remote_code_is_the_explicit_opt_in(tmp_path):
    directory, _ = hub_style_dir(tmp_path, "llada")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForDiffusionLM.from_pretrained(directory, use_remote_code=True)
    with pytest.raises(RuntimeError, match="the checkpoint's own code ran"):
        AutoModelForDiffusionLM.from_pretrained(directory, trust_remote_code=True, use_remote_code=True)


def test_saved_student_keeps_the_published_config_and_the_original_code(tmp_path):
    directory, files = hub_style_dir(tmp_path, "dream")
    model = AutoModelForDiffusionLM.from_pretrained(directory)
    out = tmp_path / "student"
    model.save_pretrained(out)
    for name in files:  # copied beside the weights: users without trl_t3d load it with its own code
        assert (out / name).read_text() == TRAP
    with open(os.path.join(directory, "config.json")) as f:
        published = json.load(f)
    with open(out / "config.json") as f:
        saved = json.load(f)
    bookkeeping = {"transformers_version", "dtype", "torch_dtype"}
    assert {k: v for k, v in saved.items() if k not in bookkeeping} == {
        k: v for k, v in published.items() if k not in bookkeeping
    }


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("use_peft", [False, True])
def test_training_with_gradient_checkpointing_on_every_family(request, tmp_path, family, use_peft):
    tokenizer = testing.make_tokenizer()
    args = testing.quick_ddo_config(tmp_path / "out", max_steps=1, learning_rate=1e-3, activation_checkpointing=True)
    model_dir = request.getfixturevalue(f"{family}_dir")
    trainer = testing.ddo_trainer(model_dir, args, testing.synthetic_trajectories(tokenizer), tokenizer, lora=use_peft)
    base = trainer.model.get_base_model() if use_peft else trainer.model
    moved = testing.train_and_list_moved(trainer)
    assert base.is_gradient_checkpointing  # kept on: the native classes checkpoint their layers
    assert moved
