"""The native LLaDA2.0 / LLaDA2.1 classes and samplers against the original code (fixtures: tests/golden/gen_llada2.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from golden._common import check_student_round_trip, needs_original, prefill_then_forward
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

from trl_t3d import testing
from trl_t3d.models import register_native_models
from trl_t3d.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeModel, LLaDA2MoeModelLM, LLaDA21MoeConfig
from trl_t3d.models.llada2.generation_llada2 import llada2_generate

register_native_models()

GOLDEN = Path(__file__).parent / "golden" / "llada2"
GOLDEN21 = GOLDEN / "llada21"
TOL = 1e-4
BOOKKEEPING = {"transformers_version", "torch_dtype", "dtype"}
BLOCK, MASK_ID = 4, 159


def golden_of(path):
    return load_file(str(path / "golden.safetensors"))


def meta_of(path):
    with safe_open(str(path / "golden.safetensors"), "pt") as f:
        return f.metadata()


@pytest.fixture(scope="module", params=[GOLDEN, GOLDEN21], ids=["llada2", "llada21"])
def case(request):
    model = AutoModelForCausalLM.from_pretrained(request.param).eval()
    return request.param, model, golden_of(request.param)


def max_delta(a, b):
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize(
    "path,config_class", [(GOLDEN, LLaDA2MoeConfig), (GOLDEN21, LLaDA21MoeConfig)], ids=["llada2", "llada21"]
)
def test_original_checkpoint_loads_without_remote_code(path, config_class):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert isinstance(model, LLaDA2MoeModelLM) and type(model.config) is config_class
    assert not any(info.values()), info  # no missing, unexpected or re-initialized keys (expert_bias included)
    tied = json.loads((path / "config.json").read_text())["tie_word_embeddings"]
    assert (model.lm_head.weight.data_ptr() == model.model.word_embeddings.weight.data_ptr()) == tied
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved == set(model.state_dict()) - ({"lm_head.weight"} if tied else set())
    assert any(k.endswith("mlp.gate.expert_bias") for k in saved)
    base, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert isinstance(base, LLaDA2MoeModel) and info["unexpected_keys"] <= {"lm_head.weight"}


@pytest.mark.parametrize("path", [GOLDEN, GOLDEN21], ids=["llada2", "llada21"])
def test_config_round_trips_unchanged(tmp_path, path):
    published = json.loads((path / "config.json").read_text())
    config = AutoConfig.from_pretrained(path)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: v for k, v in saved.items() if k not in BOOKKEEPING} == {
        k: v for k, v in published.items() if k not in BOOKKEEPING
    }


# ------------------------------------------------------------------------------------------------ golden logits
def test_no_mask_logits_loss_and_routing_equal(case):
    _, model, golden = case
    with torch.no_grad():
        out = model(input_ids=golden["no_mask.input_ids"], labels=golden["no_mask.labels"], output_router_logits=True)
    assert max_delta(out.logits, golden["no_mask.logits"]) <= TOL
    assert abs(out.loss.item() - golden["no_mask.loss"].item()) <= TOL
    routers = [k for k in golden if k.startswith("no_mask.router_logits.")]
    assert len(out.router_logits) == len(routers) == model.config.num_hidden_layers - 1  # first layer is dense
    for i, router_logits in enumerate(out.router_logits):
        want = golden[f"no_mask.router_logits.{i}"]
        assert max_delta(router_logits.reshape(want.shape), want) <= TOL


def test_sampler_additive_mask_equal(case):
    _, model, golden = case
    with torch.no_grad():
        out = model(
            input_ids=golden["sampler.input_ids"],
            attention_mask=golden["sampler.attention_mask"],
            position_ids=torch.arange(golden["sampler.input_ids"].shape[1])[None],
        )
    assert max_delta(out.logits, golden["sampler.logits"]) <= TOL
    with torch.no_grad():  # and in the sampler's own dtype for the mask (bfloat16 0/-inf)
        bf16 = model(
            input_ids=golden["sampler.input_ids"],
            attention_mask=golden["sampler.attention_mask"].to(torch.bfloat16),
            position_ids=torch.arange(golden["sampler.input_ids"].shape[1])[None],
        )
    assert max_delta(bf16.logits, golden["sampler.logits"]) <= TOL


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_training_block_mask_equal_with_sdpa_and_eager(attn_implementation):
    golden = golden_of(GOLDEN)
    model = AutoModelForCausalLM.from_pretrained(GOLDEN, attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        out = model(
            input_ids=golden["block_bool.input_ids"],
            attention_mask=golden["block_bool.attention_mask"],
            position_ids=golden["block_bool.position_ids"],
        )
    assert max_delta(out.logits, golden["block_bool.logits"]) <= TOL
    with torch.no_grad():  # the same mask as 0/1 integers, and as additive floats
        allowed = golden["block_bool.attention_mask"]
        as_int = model(
            input_ids=golden["block_bool.input_ids"],
            attention_mask=allowed.long(),
            position_ids=golden["block_bool.position_ids"],
        )
        as_float = model(
            input_ids=golden["block_bool.input_ids"],
            attention_mask=allowed.float().log(),
            position_ids=golden["block_bool.position_ids"],
        )
    assert max_delta(as_int.logits, golden["block_bool.logits"]) <= TOL
    assert max_delta(as_float.logits, golden["block_bool.logits"]) <= TOL


def test_kv_cache_equal(case):
    _, model, golden = case
    x = golden["kv.input_ids"]
    blocks = torch.arange(3 * BLOCK) // BLOCK
    mask = (blocks[None, :] <= blocks[:, None]).float().log()[None, None]
    pos = torch.arange(3 * BLOCK)[None]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = prefill_then_forward(model, x, mask, pos, cache, split=2 * BLOCK)  # as gen_llada2.py
    assert cache.get_seq_length() == golden["kv.cache_length"].item()
    assert max_delta(out.logits, golden["kv.logits"]) <= TOL


def test_a_changed_router_changes_the_logits(case):
    """The golden comparison can fail: the expert bias alone (choice, not weight) moves the logits."""
    path, _, golden = case
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    gate = model.model.layers[1].mlp.gate
    with torch.no_grad():
        gate.expert_bias.copy_(-gate.expert_bias)
        out = model(input_ids=golden["no_mask.input_ids"])
    assert max_delta(out.logits, golden["no_mask.logits"]) > 1e-2


def test_saved_student_keeps_names_and_logits(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(GOLDEN).eval()
    model.save_pretrained(tmp_path)
    with (
        safe_open(str(tmp_path / "model.safetensors"), "pt") as f,
        safe_open(str(GOLDEN / "model.safetensors"), "pt") as g,
    ):
        assert set(f.keys()) == set(g.keys())
    published = json.loads((GOLDEN / "config.json").read_text())
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: v for k, v in saved.items() if k not in BOOKKEEPING} == {
        k: v for k, v in published.items() if k not in BOOKKEEPING
    }
    golden = golden_of(GOLDEN)
    with torch.no_grad():
        out = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(input_ids=golden["no_mask.input_ids"])
    assert max_delta(out.logits, golden["no_mask.logits"]) <= TOL


def test_bf16_and_gradient_checkpointing():
    golden = golden_of(GOLDEN)
    model = AutoModelForCausalLM.from_pretrained(GOLDEN, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = model(input_ids=golden["no_mask.input_ids"])
    assert out.logits.dtype == torch.float32  # the original returns float32 logits
    assert max_delta(out.logits, golden["no_mask.logits"]) < 0.5  # bf16 on a peaked random model
    model = AutoModelForCausalLM.from_pretrained(GOLDEN).train()
    model.gradient_checkpointing_enable()
    loss = model(input_ids=golden["no_mask.input_ids"], labels=golden["no_mask.labels"]).loss
    loss.backward()
    router = model.model.layers[1].mlp.gate.weight
    assert router.grad is not None and model.model.layers[1].mlp.experts[0].up_proj.weight.grad is not None
    assert set(model._no_split_modules) == {"LLaDA2MoeDecoderLayer"}  # a layer and its experts stay whole


# ------------------------------------------------------------------------------------------------ samplers
def sampler_kwargs(meta_key, path):
    return dict(json.loads(meta_of(path)["samplers"]))


def prompts_of(golden):
    return [golden[f"sampler.prompt.{i}"] for i in range(sum(k.startswith("sampler.prompt.") for k in golden))]


def left_pad(prompts, pad_id=157):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return ids, mask


def original_kwargs_to_ours(kwargs):
    ours = {
        "max_new_tokens": kwargs["max_new_tokens"],
        "block_length": kwargs["block_size"],
        "threshold": kwargs["threshold"],
    }
    if "steps_per_block" in kwargs:
        ours["steps"] = kwargs["steps_per_block"]
    for key in ("editing_threshold", "max_post_steps", "num_to_transfer"):
        if key in kwargs:
            ours[key] = kwargs[key]
    return ours


@pytest.mark.parametrize("path", [GOLDEN, GOLDEN21], ids=["llada2", "llada21"])
def test_sampler_token_parity_alone_and_in_a_left_padded_batch(path):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    golden = golden_of(path)
    prompts = prompts_of(golden)
    cases = sampler_kwargs("samplers", path)
    edited = 0
    for name, kwargs in cases.items():
        ours = original_kwargs_to_ours(kwargs)
        if path == GOLDEN21 and "editing_threshold" not in ours:
            ours["editing_threshold"] = 0.9
        expected = [golden[f"sample.{name}.{i}.sequences"] for i in range(len(prompts))]
        for i, prompt in enumerate(prompts):  # alone
            out = llada2_generate(
                model, prompt[None], mask_token_id=MASK_ID, return_dict=True, output_history=path == GOLDEN21, **ours
            )
            n = len(prompt) + ours["max_new_tokens"]
            assert torch.equal(out.sequences[0], expected[i][:n]), (name, i)
            if path == GOLDEN:
                assert out.nfe.item() == golden[f"sample.{name}.{i}.nfe"].item(), (name, i)
            else:  # every intermediate canvas of the original, forward by forward
                histories = golden[f"sample.{name}.{i}.histories"][1:]
                assert out.nfe.item() == histories.shape[0], (name, i)
                assert torch.equal(out.histories[0], histories[:, : out.histories[0].shape[1]]), (name, i)
                edited += int(out.edit_counts.sum())
        ids, mask = left_pad(prompts)  # all prompts in one left-padded batch: each row as alone
        out = llada2_generate(model, ids, mask, mask_token_id=MASK_ID, return_dict=True, **ours)
        for i, prompt in enumerate(prompts):
            pad = ids.shape[1] - len(prompt)
            assert torch.equal(out.sequences[i, pad:], expected[i][: len(prompt) + ours["max_new_tokens"]]), (name, i)
        if path == GOLDEN:  # the original's own (equal-length) batch
            twin = golden["sampler.twin"]
            batch = llada2_generate(model, torch.stack([prompts[0], twin]), mask_token_id=MASK_ID, **ours)
            want = golden[f"sample.{name}.batch_equal.sequences"][:, : batch.shape[1]]
            assert torch.equal(batch, want), name
    if path == GOLDEN21:
        assert edited > 0  # the fixtures exercise editing


def test_absolute_block_alignment_is_not_completion_alignment():
    """The first completion block ends at the next multiple of the block length: a 6-token prompt with blocks of 4
    decodes positions 6-7 as one block (then 8-11), so its nfe differs from completion-aligned blocks."""
    model = AutoModelForCausalLM.from_pretrained(GOLDEN).eval()
    prompt = prompts_of(golden_of(GOLDEN))[0]
    assert len(prompt) % BLOCK
    out = llada2_generate(
        model,
        prompt[None],
        mask_token_id=MASK_ID,
        max_new_tokens=6,
        block_length=BLOCK,
        steps=4,
        threshold=1.1,
        return_dict=True,
    )
    steps = out.step_map[0].tolist()
    # threshold above 1: one token per step; the first block has 2 completion positions (steps 0-1)
    assert sorted(steps[:2]) == [0, 1] and min(steps[2:]) == 2


# ---------------------------------------------------------------- the other direction (needs the original code)
@needs_original("TRL_T3D_LLADA2_ORIGINAL", "LLaDA2.0")
def test_original_code_loads_our_student(tmp_path):
    check_student_round_trip("gen_llada2.py", "TRL_T3D_LLADA2_ORIGINAL", tmp_path / "student")


# ---------------------------------------------------------------- loading through trl_t3d, adapter, pipeline
TRAP = 'raise RuntimeError("the checkpoint\'s own code ran")\n'


@pytest.mark.parametrize("path", [GOLDEN, GOLDEN21], ids=["llada2", "llada21"])
@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_hub_layout_loads_natively_with_automodel_for_diffusion_lm(tmp_path, path, trust_remote_code):
    """The golden checkpoint with the original file names beside it (files that raise): never run unless asked."""
    import shutil

    from trl_t3d import AutoModelForDiffusionLM
    from trl_t3d.models.loading import original_code_files

    for name in ("config.json", "model.safetensors"):
        shutil.copy(path / name, tmp_path / name)
    files = original_code_files(AutoConfig.from_pretrained(tmp_path))
    assert files  # the published auto_map survives
    for name in files:
        (tmp_path / name).write_text(TRAP)
    model = AutoModelForDiffusionLM.from_pretrained(str(tmp_path), trust_remote_code=trust_remote_code)
    assert isinstance(model, LLaDA2MoeModelLM) and type(model).__module__.startswith("trl_t3d.models.")
    assert model.get_diffusion_adapter().name == "llada2"
    golden = golden_of(path)
    with torch.no_grad():
        logits = model(input_ids=golden["no_mask.input_ids"]).logits
    assert max_delta(logits, golden["no_mask.logits"]) <= TOL
    out = tmp_path / "student"
    model.save_pretrained(out)
    for name in files:  # the original code travels with the student
        assert (out / name).read_text() == TRAP


@pytest.mark.parametrize("family_dir", ["llada2_dir", "llada21_dir"])
def test_adapter_lora_targets_and_block_cache(request, family_dir, tokenizer):
    from trl_t3d import diffusion_generate, get_adapter

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(family_dir)).eval()
    adapter = get_adapter(model, tokenizer=tokenizer)
    assert adapter.name == "llada2" and adapter.block_causal and adapter.trained_block_length(model) == 32
    targets = adapter.resolve_lora_targets(model)
    assert set(targets) == {"query_key_value", "dense", "gate_proj", "up_proj", "down_proj"}
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert any(".experts." in n for n in adapted) and any(".shared_experts." in n for n in adapted)
    assert not any(n.endswith((".gate", "lm_head")) for n in adapted)  # never the router or the head
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(family_dir)).eval()
    batch = tokenizer(["12+34=", "x"], return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = dict(max_new_tokens=8, block_length=4, processing_class=tokenizer, stop_at_eos=False)
    cached = diffusion_generate(model, batch["input_ids"], batch["attention_mask"], use_cache=True, **kwargs)
    plain = diffusion_generate(model, batch["input_ids"], batch["attention_mask"], use_cache=False, **kwargs)
    assert torch.equal(cached, plain)


def test_editing_trajectories_are_refused_with_the_fix():
    from trl_t3d.adapters import LLaDA2Adapter

    model = AutoModelForCausalLM.from_pretrained(GOLDEN21).eval()
    prompt = prompts_of(golden_of(GOLDEN21))[0][None]
    kwargs = dict(mask_token_id=MASK_ID, max_new_tokens=10, block_length=BLOCK, threshold=0.5, return_dict=True)
    edited = llada2_generate(model, prompt, editing_threshold=0.3, **kwargs)
    assert edited.edit_counts.sum() > 0
    with pytest.raises(ValueError, match="editing_threshold=None"):
        LLaDA2Adapter.trajectory(edited)
    plain = llada2_generate(model, prompt, **kwargs)  # LLaDA2.0's rule: each token committed once
    step_map = LLaDA2Adapter.trajectory(plain)
    assert (step_map >= 0).all() and plain.edit_counts.sum() == 0


@pytest.mark.parametrize("family_dir", ["llada2_dir", "llada21_dir"])
def test_collect_distill_full_and_lora_evaluate_and_lm_eval(request, tmp_path, family_dir):
    """The whole pipeline on a tiny native LLaDA2.0 / 2.1: collection, full and LoRA distillation with gradient
    checkpointing, few-step evaluation, lm-eval's generate_until."""
    import datasets
    from lm_eval.api.instance import Instance

    from trl_t3d import AutoModelForDiffusionLM
    from trl_t3d.collect import collect_trajectories
    from trl_t3d.evaluation import Task, evaluate_few_step
    from trl_t3d.evaluation.lm_eval_backend import DiffusionLMEval
    from trl_t3d.generation import DiffusionGenerationConfig

    directory = request.getfixturevalue(family_dir)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(directory)
    teacher = AutoModelForDiffusionLM.from_pretrained(directory)
    prompts = datasets.Dataset.from_dict({"prompt": ["1+1=", "abc", "hello", "7-2="]})
    config = DiffusionGenerationConfig(max_new_tokens=8, block_length=4, tokens_per_step=1)
    trajectories = collect_trajectories(
        teacher, tokenizer, prompts, config, batch_size=2, show_progress=False, apply_chat_template=False
    )
    assert len(trajectories) == 4 and all(sorted(s for s in r["step_map"] if s >= 0) for r in trajectories)
    for use_peft, trainer, moved in testing.one_step_full_and_lora(directory, trajectories, tokenizer, tmp_path):
        assert moved and (not use_peft or all("lora_" in n for n in moved))
        assert not use_peft or not any(".mlp.gate." in n for n in moved)  # LoRA leaves the router alone
        assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))
    task = Task("echo", ["1+1=", "abc"], ["2", "b"], max_new_tokens=8)
    report = evaluate_few_step(teacher, tokenizer, task, [1, 2], block_length=4, show_progress=False)
    assert [r["tokens_per_step"] for r in report["results"]] == [1, 2]
    lm = DiffusionLMEval(directory, tokens_per_step=2, check_greedy=False)
    (text,) = lm.generate_until(
        [Instance("generate_until", {}, ("1+1=", {"until": [], "max_gen_toks": 4}), 0, ("s", 0, 1))]
    )
    assert isinstance(text, str)


# ---------------------------------------------------------------- FSDP2: 2 processes equal 1
@pytest.mark.accelerate_launch
def test_fsdp2_two_processes_equal_one_on_tiny_native_llada2(llada2_dir, tmp_path):
    """`recipes/accelerate_configs/fsdp.yaml` (FSDP2) on 2 CPU processes trains a tiny native LLaDA2 (MoE, each
    decoder layer with its experts one FSDP unit) to the 1-process weights, full and LoRA (tests/distributed/checks.py)."""
    import importlib.util
    import time

    root = Path(__file__).resolve().parents[1]
    script = root / "tests" / "distributed" / "checks.py"
    spec = importlib.util.spec_from_file_location("distributed_checks_llada2", script)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    cases = [
        {"name": f"llada2_{mode}", "model_dir": llada2_dir, "peft": mode == "lora", "ref_sync_steps": 2}
        for mode in ("full", "lora")
    ]
    single = {}
    for case in cases:
        trainer = checks.build_trainer(case, str(tmp_path / "single" / case["name"]), 4)
        trainer.train()
        single[case["name"]] = checks.trained_weights(trainer)
    out = tmp_path / "out"
    out.mkdir()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"cases": cases, "out": str(out)}))
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate), "launch", "--config_file", str(root / "recipes" / "accelerate_configs" / "fsdp.yaml"),
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(script), str(spec_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"fsdp2 llada2: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    setup = json.loads((out / "setup.json").read_text())
    for name, s in setup.items():
        assert s["distributed_type"] == "DistributedType.FSDP" and s["fsdp_version"] == 2, (name, s)
        assert s["policy_fully_sharded"] and s["policy_dtensor"], (name, s)
    for case in cases:
        dist, ref = torch.load(out / f"{case['name']}.pt", weights_only=False), single[case["name"]]
        torch.testing.assert_close(torch.tensor(dist["losses"]), torch.tensor(ref["losses"]), rtol=0, atol=1e-5)
        assert dist["policy"].keys() == ref["policy"].keys()
        for key, value in dist["policy"].items():
            torch.testing.assert_close(value, ref["policy"][key], rtol=0, atol=2e-5, msg=f"{case['name']}: {key}")


def test_every_expert_gets_a_gradient_even_when_no_token_chose_it():
    """What keeps sharded training in step: a rank whose tokens skip an expert still reduces its (zero) gradient."""
    model = AutoModelForCausalLM.from_pretrained(GOLDEN).train()
    out = model(input_ids=torch.tensor([[3]]), labels=torch.tensor([[4]]))  # one token: 3 of 8 experts chosen
    out.loss.backward()
    grads = [e.up_proj.weight.grad for e in model.model.layers[1].mlp.experts]
    assert all(g is not None for g in grads) and sum(bool(g.abs().sum() > 0) for g in grads) == 3


@pytest.mark.parametrize("path", [GOLDEN, Path(__file__).parent / "golden" / "lladamoe"], ids=["llada2", "lladamoe"])
def test_device_map_and_bf16_loading(path):
    golden = golden_of(path)
    model = AutoModelForCausalLM.from_pretrained(path, device_map="auto", dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16 and str(model.device) == "cpu"  # no accelerator here: all on the CPU
    with torch.no_grad():
        logits = model(input_ids=golden["no_mask.input_ids"]).logits
    assert logits.shape == golden["no_mask.logits"].shape
    assert (logits.float().argmax(-1) == golden["no_mask.logits"].argmax(-1)).float().mean() > 0.8
