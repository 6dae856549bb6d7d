"""The native LLaDA-MoE class against the original code (fixtures: tests/golden/gen_lladamoe.py) and in the pipeline."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from golden._common import check_student_round_trip, needs_original
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from trl_t3d import testing
from trl_t3d.models import register_native_models
from trl_t3d.models.llada_moe import LLaDAMoEConfig, LLaDAMoEModelLM

register_native_models()

GOLDEN = Path(__file__).parent / "golden" / "lladamoe"
PLAIN = GOLDEN / "plain"
TOL = 1e-4
BOOKKEEPING = {"transformers_version", "torch_dtype", "dtype"}
TRAP = 'raise RuntimeError("the checkpoint\'s own code ran")\n'


def max_delta(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("path", [GOLDEN, PLAIN], ids=["moe_features", "plain"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_original_checkpoint_loads_and_logits_equal(path, attn_implementation):
    model, info = AutoModelForCausalLM.from_pretrained(
        path, output_loading_info=True, attn_implementation=attn_implementation
    )
    assert type(model) is LLaDAMoEModelLM and type(model.config) is LLaDAMoEConfig
    assert not any(info.values()), info  # expert_bias and every expert loaded, nothing re-initialized
    tied = json.loads((path / "config.json").read_text())["tie_word_embeddings"]
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict()) - ({"lm_head.weight"} if tied else set())
    golden = load_file(str(path / "golden.safetensors"))
    model.eval()
    with torch.no_grad():
        no_mask = model(input_ids=golden["no_mask.input_ids"]).logits
        padded = model(input_ids=golden["padding.input_ids"], attention_mask=golden["padding.attention_mask"]).logits
        positioned = model(
            input_ids=golden["padding.input_ids"],
            attention_mask=golden["padding.attention_mask"],
            position_ids=golden["padding_positions.position_ids"],
        ).logits
    assert max_delta(no_mask, golden["no_mask.logits"]) <= TOL
    assert max_delta(padded, golden["padding.logits"]) <= TOL
    assert max_delta(positioned, golden["padding_positions.logits"]) <= TOL


def test_config_round_trips_and_the_router_bias_matters(tmp_path):
    published = json.loads((GOLDEN / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(GOLDEN).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: v for k, v in saved.items() if k not in BOOKKEEPING} == {
        k: v for k, v in published.items() if k not in BOOKKEEPING
    }
    golden = load_file(str(GOLDEN / "golden.safetensors"))
    with torch.no_grad():
        model.model.layers[1].mlp.expert_bias.mul_(-1)  # the comparison can fail: routing moves the logits
        assert max_delta(model(input_ids=golden["no_mask.input_ids"]).logits, golden["no_mask.logits"]) > 1e-3


def test_router_logits_aux_loss_bf16_and_gradient_checkpointing():
    golden = load_file(str(GOLDEN / "golden.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(GOLDEN).train()
    model.gradient_checkpointing_enable()
    out = model(input_ids=golden["no_mask.input_ids"], labels=golden["no_mask.input_ids"], output_router_logits=True)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (24, 8)  # the two MoE layers
    assert out.aux_loss is not None and out.aux_loss.item() >= 1.0 - 1e-5  # num_experts * sum(f * P) >= 1
    out.loss.backward()
    assert model.model.layers[1].mlp.experts[0].gate_proj.weight.grad is not None
    assert set(model._no_split_modules) == {"LLaDAMoEDecoderLayer"}
    bf16 = AutoModelForCausalLM.from_pretrained(GOLDEN, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        assert max_delta(bf16(input_ids=golden["no_mask.input_ids"]).logits, golden["no_mask.logits"]) < 0.5
    with pytest.raises(ValueError, match="no KV cache"):
        bf16(input_ids=golden["no_mask.input_ids"], use_cache=True)


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_hub_layout_loads_natively(tmp_path, trust_remote_code):
    from trl_t3d import AutoModelForDiffusionLM
    from trl_t3d.models.loading import original_code_files

    for name in ("config.json", "model.safetensors"):
        shutil.copy(GOLDEN / name, tmp_path / name)
    files = original_code_files(AutoConfig.from_pretrained(tmp_path))
    for name in files:
        (tmp_path / name).write_text(TRAP)
    model = AutoModelForDiffusionLM.from_pretrained(str(tmp_path), trust_remote_code=trust_remote_code)
    assert isinstance(model, LLaDAMoEModelLM) and model.get_diffusion_adapter().name == "llada_moe"
    golden = load_file(str(GOLDEN / "golden.safetensors"))
    with torch.no_grad():
        assert max_delta(model(input_ids=golden["no_mask.input_ids"]).logits, golden["no_mask.logits"]) <= TOL


def test_adapter_lora_targets_never_the_router_and_batch_invariance(lladamoe_dir, tokenizer):
    from peft import LoraConfig, get_peft_model

    from trl_t3d import diffusion_generate, get_adapter

    model = AutoModelForCausalLM.from_pretrained(lladamoe_dir).eval()
    adapter = get_adapter(model, tokenizer=tokenizer)
    assert adapter.name == "llada_moe" and not adapter.block_causal
    targets = adapter.resolve_lora_targets(model)
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(lladamoe_dir), LoraConfig(r=2, target_modules=targets)
    )
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert any(".experts." in n for n in adapted) and any(".shared_expert." in n for n in adapted)
    assert not any(n.endswith(("mlp.gate", "lm_head")) for n in adapted)
    prompts = ["12+34=", "perm:abcde", "x"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = dict(max_new_tokens=8, block_length=4, processing_class=tokenizer, stop_at_eos=False)
    together = diffusion_generate(model, batch["input_ids"], batch["attention_mask"], **kwargs)
    for row, prompt in enumerate(prompts):
        ids = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)["input_ids"]
        alone = diffusion_generate(model, ids, **kwargs)
        assert torch.equal(together[row, -8:], alone[0, -8:]), prompt


def test_collect_distill_full_and_lora_evaluate_and_lm_eval(lladamoe_dir, tmp_path):
    import datasets
    from transformers import AutoTokenizer

    from trl_t3d import AutoModelForDiffusionLM
    from trl_t3d.collect import collect_trajectories
    from trl_t3d.evaluation import Task, evaluate_few_step
    from trl_t3d.generation import DiffusionGenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(lladamoe_dir)
    teacher = AutoModelForDiffusionLM.from_pretrained(lladamoe_dir)
    prompts = datasets.Dataset.from_dict({"prompt": ["1+1=", "abc", "hello", "7-2="]})
    config = DiffusionGenerationConfig(max_new_tokens=8, block_length=4, tokens_per_step=1)
    trajectories = collect_trajectories(
        teacher, tokenizer, prompts, config, batch_size=2, show_progress=False, apply_chat_template=False
    )
    for use_peft, trainer, moved in testing.one_step_full_and_lora(lladamoe_dir, trajectories, tokenizer, tmp_path):
        assert moved and (not use_peft or all("lora_" in n for n in moved))
        assert not use_peft or not any(".mlp.gate." in n for n in moved)
        assert not trainer.model.config.output_router_logits  # no router aux loss during distillation
    task = Task("echo", ["1+1=", "abc"], ["2", "b"], max_new_tokens=8)
    report = evaluate_few_step(teacher, tokenizer, task, [1, 2], block_length=4, show_progress=False)
    assert [r["tokens_per_step"] for r in report["results"]] == [1, 2]
    from lm_eval.api.instance import Instance

    from trl_t3d.evaluation.lm_eval_backend import DiffusionLMEval

    lm = DiffusionLMEval(lladamoe_dir, tokens_per_step=2, check_greedy=False)
    request = Instance("generate_until", {}, ("1+1=", {"until": [], "max_gen_toks": 4}), 0, ("s", 0, 1))
    (text,) = lm.generate_until([request])
    assert isinstance(text, str) and lm.adapter.name == "llada_moe"


@needs_original("TRL_T3D_LLADAMOE_ORIGINAL", "LLaDA-MoE")
def test_original_code_loads_our_student(tmp_path):
    check_student_round_trip("gen_lladamoe.py", "TRL_T3D_LLADAMOE_ORIGINAL", tmp_path / "student")
