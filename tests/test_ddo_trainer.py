"""DDOTrainer end to end on tiny offline models: forward counts, exact values, accumulation, LoRA/QLoRA, self-play."""

import json
import logging
import math
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from trl_t3d import DDOConfig, DDOTrainer, testing  # noqa: E402


def trajectories(tok, n=4, completion_length=8, block_length=4, seed=0, equal_prompts=False):
    """Random tokens; step maps a random order inside each block, blocks in sequence; prompts of 4-6 tokens."""
    lengths = (5,) if equal_prompts else (4, 5, 6)
    return testing.synthetic_trajectories(tok, n, completion_length, block_length, seed, prompt_lengths=lengths)


def config(tmp_path, **kw):
    # these tests check T3D's terms; the default objective is tested in test_mean_field.py
    return testing.quick_ddo_config(
        tmp_path / "out", **{"max_steps": 2, "learning_rate": 1e-3, "loss_type": "t3d", **kw}
    )


@pytest.fixture(scope="module")
def tok():
    return testing.make_tokenizer()


class _Counter:
    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *args):
        self.count += 1


def test_one_policy_and_one_reference_forward_per_micro_batch(tmp_path, tok):
    args = config(tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=2)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok), processing_class=tok
    )
    policy, ref = _Counter(trainer.model), _Counter(trainer.ref_model)
    trainer.train()
    assert (policy.count, ref.count) == (4, 4)  # 2 optimizer steps x 2 micro-batches; T3D's reference code runs 8 + 8


def test_one_forward_each_with_block_causal_and_peft(tmp_path, tok, sdar_dir):

    args = config(tmp_path, trust_remote_code=True, max_steps=1, mask_ratios=[1.0])  # fully masked states
    trainer = testing.ddo_trainer(sdar_dir, args, trajectories(tok, completion_length=10), tok, lora=True)
    assert trainer.ref_model is None  # the reference is the base model with adapters disabled: no second model
    root = _Counter(trainer.model.get_base_model())
    trainer.train()
    assert root.count == 2
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert bool(batch["loss_mask"][0].all())  # block-causal: every block of the completion is trained at once


def test_policy_equal_reference_gives_log2(tmp_path, tok):
    args = config(tmp_path, alpha=0.7, lambda_path=0.0)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok), processing_class=tok
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model.train(), batch)
    m = trainer._metrics["train"]
    assert m["loss_real"][-1] == pytest.approx(math.log(2), abs=1e-6)
    assert m["loss_fake"][-1] == pytest.approx(0.7 * math.log(2), abs=1e-6)
    assert loss.item() == pytest.approx(1.7 * math.log(2), abs=1e-6)
    assert m["margins/real"][-1] == 0 and m["margins/fake"][-1] == 0


class _GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_accumulation_2x1_equals_batch_2(tmp_path, tok):
    data = trajectories(tok, n=2, equal_prompts=True)
    grads = []
    for bs, ga in ((2, 1), (1, 2)):
        capture = _GradCapture()
        args = config(
            tmp_path,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=1,
            random_token_ratio=0.0,
            max_grad_norm=0.0,
        )
        trainer = DDOTrainer(
            testing.make_generic_mlm(tok), args=args, train_dataset=data, processing_class=tok, callbacks=[capture]
        )
        trainer.train()
        grads.append(capture.grads)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_moves_margins_and_student_reloads(tmp_path, tok):
    from transformers import AutoModelForCausalLM

    args = config(tmp_path, max_steps=16, per_device_train_batch_size=4, logging_steps=4, learning_rate=2e-3)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok, n=8), processing_class=tok
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "margins/real" in h]
    assert logs[-1]["margins/real"] > logs[0]["margins/real"] and logs[-1]["margins/real"] > 0
    assert logs[-1]["margins/fake"] < logs[0]["margins/fake"] and logs[-1]["margins/fake"] < 0
    for key in ("loss_ddo", "loss_path", "logps/ref_fake", "accuracy", "tokens_per_second", "grad_norm"):
        assert key in logs[-1]
    out = str(tmp_path / "student")
    trainer.save_model(out)
    card = open(os.path.join(out, "README.md")).read()
    assert "alpha = 0.5, beta = 0.1" in card and "tokens per step" in card
    # The recommended decoding uses the trajectories' block length (4 here), also without dataset metadata.
    assert "block length 4, 4 tokens per step" in card
    saved = json.load(open(os.path.join(out, "diffusion_generation_config.json")))
    assert saved["block_length"] == 4 and saved["tokens_per_step"] == 4
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = trainer.data_collator([trainer.train_dataset[0]])
    student = trainer.model.eval()
    ids = torch.cat([batch["prompt_ids"], batch["xt"]], 1)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, student(input_ids=ids).logits)
    from trl_t3d.generation import diffusion_generate

    seq = diffusion_generate(reloaded, batch["prompt_ids"], max_new_tokens=8, block_length=4, steps=2)
    assert seq.shape[1] == batch["prompt_ids"].shape[1] + 8


def test_lora_targets_resolve_to_llada_names(tmp_path, tok, llada_dir, caplog):
    from peft import LoraConfig

    args = config(tmp_path, trust_remote_code=True, activation_checkpointing=True)
    with caplog.at_level(logging.WARNING):
        trainer = testing.ddo_trainer(llada_dir, args, trajectories(tok), tok, lora=True)
    # Loaded by `load_diffusion_lm`: the native LLaDA class, which checkpoints its blocks, so checkpointing stays on.
    assert type(trainer.model.get_base_model()).__module__.startswith("trl_t3d.models.llada")
    assert trainer.args.activation_checkpointing and "Gradient checkpointing is not supported" not in caplog.text
    assert trainer.adapter.name == "llada"
    targets = set(trainer.model.peft_config["default"].target_modules)
    assert targets == testing.LLADA_LORA_TARGETS
    lora_leaves = {
        n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in trainer.model.named_parameters() if "lora_A" in n
    }
    assert targets <= lora_leaves
    lora_modules = {n.split(".lora_A")[0] for n, _ in trainer.model.named_parameters() if "lora_A" in n}
    assert not any(m.endswith("model.ff_out") for m in lora_modules), "LoRA must stay off the vocabulary head"
    assert any(m.endswith("blocks.0.ff_out") for m in lora_modules)
    before = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if "lora_B" in n)
    with pytest.raises(ValueError, match="names a Linear module"):
        DDOTrainer(
            llada_dir,
            args=args,
            train_dataset=trajectories(tok),
            processing_class=tok,
            peft_config=LoraConfig(r=4, target_modules=["gate_proj", "down_proj"]),
        )


def test_qlora_4bit_on_cpu(tmp_path, tok):
    pytest.importorskip("bitsandbytes")

    # Widths are multiples of 64: bitsandbytes' CPU 4-bit kernels (AVX512-BF16 CPUs) quantize in blocks of 64.
    model_dir = testing.save_generic_mlm(str(tmp_path / "generic64"), hidden_size=64)
    quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}
    args = config(tmp_path, model_init_kwargs={"quantization_config": quant, "dtype": "float32"})
    trainer = testing.ddo_trainer(model_dir, args, trajectories(tok), tok, lora=True)
    assert any(type(m).__name__ == "Linear4bit" for m in trainer.model.modules())
    lora_b = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert lora_b and all(not p.any() for p in lora_b.values())  # PEFT's init: the adapter adds zero
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad(), trainer.model.disable_adapter():
        base_logits = trainer._completion_logits(trainer.model, batch)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == args.max_steps and all(math.isfinite(v) for v in losses)
    trained = dict(trainer.model.named_parameters())
    assert all(trained[n].detach().abs().sum() > 0 for n in lora_b)  # the adapters learned
    assert not any(p.requires_grad for n, p in trained.items() if "lora_" not in n)
    with torch.no_grad(), trainer.model.disable_adapter():  # the 4-bit base is frozen: the reference is unchanged
        torch.testing.assert_close(trainer._completion_logits(trainer.model, batch), base_logits, rtol=0, atol=1e-5)


def test_ref_sync_full_copies_policy(tmp_path, tok):
    args = config(tmp_path, ref_sync_steps=2, max_steps=2)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok), processing_class=tok
    )
    initial = [p.clone() for p in trainer.ref_model.parameters()]
    trainer.train()
    for ref, pol in zip(trainer.ref_model.parameters(), trainer.model.parameters()):
        assert torch.equal(ref, pol)
    assert any(not torch.equal(r, i) for r, i in zip(trainer.ref_model.parameters(), initial))
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_ref_sync_peft_uses_a_frozen_reference_adapter(tmp_path, tok):
    from peft import LoraConfig

    args = config(tmp_path, ref_sync_steps=1, max_steps=2, learning_rate=1e-2)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok),
        args=args,
        train_dataset=trajectories(tok),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False),
    )
    trainer.train()
    model = trainer.model
    assert "ref" in model.peft_config and model.active_adapter == "default"
    params = dict(model.named_parameters())
    pairs = [(n, n.replace(".default.", ".ref.")) for n in params if ".default." in n]
    assert pairs and all(torch.equal(params[a], params[b]) for a, b in pairs)
    assert all(params[a].requires_grad and not params[b].requires_grad for a, b in pairs)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    with torch.no_grad():
        policy_logits = trainer._completion_logits(model, batch)
        with trainer._reference(model) as ref:
            ref_logits = trainer._completion_logits(ref, batch)
        with model.disable_adapter():
            base_logits = trainer._completion_logits(model, batch)
    torch.testing.assert_close(ref_logits, policy_logits)
    assert not torch.allclose(ref_logits, base_logits)


def test_bad_inputs(tmp_path, tok):
    args = config(tmp_path)
    with pytest.raises(ValueError, match="train_dataset"):
        DDOTrainer(testing.make_generic_mlm(tok), args=args, processing_class=tok)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    no_mask = PreTrainedTokenizerFast(  # no mask token anywhere in its vocabulary
        tokenizer_object=Tokenizer(models.WordLevel(vocab={"<pad>": 0, "<eos>": 1, "a": 2}, unk_token="<pad>")),
        pad_token="<pad>",
        eos_token="<eos>",
    )
    model = testing.make_generic_mlm(tok)
    model.config.mask_token_id = None
    with pytest.raises(ValueError, match="no mask token"):
        DDOTrainer(model, args=args, train_dataset=trajectories(tok), processing_class=no_mask)
    with pytest.raises(ValueError, match="pad_token_id == mask_token_id"):
        DDOTrainer(
            testing.make_generic_mlm(tok),
            args=config(tmp_path, mask_token_id=tok.pad_token_id),
            train_dataset=trajectories(tok),
            processing_class=tok,
        )
    with pytest.raises(ValueError, match="step_map"):
        bad = trajectories(tok).map(lambda r: {"step_map": r["step_map"][:-1]})
        DDOTrainer(testing.make_generic_mlm(tok), args=args, train_dataset=bad, processing_class=tok)
    with pytest.raises(ValueError, match="alpha"):
        config(tmp_path, alpha=-1.0)
    with pytest.raises(ValueError, match="ref_sync_steps"):
        config(tmp_path, recollect_each_round=True)


def test_prompt_only_dataset_collects_trajectories(tmp_path, tok):
    args = config(
        tmp_path, max_steps=1, generation_max_new_tokens=8, generation_block_length=4, max_completion_length=8
    )
    prompts = Dataset.from_list([{"prompt": "1+1="}, {"prompt": "2+3="}])
    trainer = DDOTrainer(testing.make_generic_mlm(tok), args=args, train_dataset=prompts, processing_class=tok)
    assert {"prompt_ids", "completion_ids", "step_map"} <= set(trainer.train_dataset.column_names)
    trainer.train()


def test_self_collection_is_the_cached_resumable_path(tmp_path, tok):
    """Prompts only: the trainer collects through `collect_or_reuse` into output_dir/trajectories (the CLI's cache).
    A second trainer on the same prompts reuses it without a forward; other decoding settings are refused."""
    settings = dict(max_steps=1, generation_max_new_tokens=8, generation_block_length=4, max_completion_length=8)
    prompts = Dataset.from_list([{"prompt": "1+1="}, {"prompt": "2+3="}])
    first = DDOTrainer(testing.make_generic_mlm(tok), args=config(tmp_path, **settings), train_dataset=prompts,
                       processing_class=tok)  # fmt: skip
    cache = tmp_path / "out" / "trajectories"
    assert (cache / "dataset_info.json").exists() and not (cache / "shards").exists()
    model = testing.make_generic_mlm(tok)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    again = DDOTrainer(model, args=config(tmp_path, **settings), train_dataset=prompts, processing_class=tok)
    assert not calls  # reused, nothing decoded
    assert again.train_dataset.dataset["completion_ids"] == first.train_dataset.dataset["completion_ids"]
    with pytest.raises(ValueError, match="another collection.*generation|decoding `block_length`"):
        DDOTrainer(testing.make_generic_mlm(tok), args=config(tmp_path, **{**settings, "generation_block_length": 8}),
                   train_dataset=prompts, processing_class=tok)  # fmt: skip


def test_config_keeps_trls_checkpointing_default_without_a_deprecation_warning(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers warns when the old name is set
        args = DDOConfig(output_dir=str(tmp_path), report_to="none")
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert (
        DDOConfig(output_dir=str(tmp_path), report_to="none", activation_checkpointing=False).gradient_checkpointing
        is False
    )


def test_presets_fill_only_the_fields_left_unset(tmp_path, tok):
    from trl_t3d.trainer.ddo_config import PRESETS

    def settings(**kw):
        args = DDOConfig(output_dir=str(tmp_path), report_to="none", **kw)
        return {name: getattr(args, name) for name in PRESETS["recommended"]}

    assert settings() == {
        "loss_type": ["t3d"],  # chosen by the objective protocol's pre-registered rule (issue #23)
        "mask_ratio_exponent": 0.0,
        "random_token_ratio": 0.0,
        "ref_sync_steps": 0,
        "generation_temperature": 0.0,
    }
    assert settings(preset="t3d_paper") == {
        "loss_type": ["t3d"],
        "mask_ratio_exponent": 8.0,
        "random_token_ratio": 0.1,
        "ref_sync_steps": 10,
        "generation_temperature": 0.1,
    }
    assert settings(preset="t3d_paper", random_token_ratio=0.0, ref_sync_steps=0)["random_token_ratio"] == 0.0
    assert settings(loss_type="ntd")["loss_type"] == "ntd"  # an explicit objective wins over the preset's
    # the trainer's states use the resolved values
    args = config(tmp_path, preset="t3d_paper", loss_type=None)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok), processing_class=tok
    )
    collator = trainer.data_collator
    assert (collator.mask_ratio_exponent, collator.random_token_ratio) == (8.0, 0.1)


def test_ntd_objective_runs_no_reference_forward_and_keeps_no_reference(tmp_path, tok):
    args = config(tmp_path, loss_type="ntd", per_device_train_batch_size=1, gradient_accumulation_steps=2)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok), processing_class=tok
    )
    assert trainer.ref_model is None and trainer.loss_terms == {"ntd": 1.0}
    policy = _Counter(trainer.model)
    trainer.train()
    assert policy.count == 4  # 2 optimizer steps x 2 micro-batches, policy only
    logged = [h for h in trainer.state.log_history if "loss_ntd" in h]
    assert logged and "loss_ddo" not in logged[0] and "logps/ref_real" not in logged[0]


def test_weighted_terms_sum_to_the_loss(tmp_path, tok):
    """loss = sum of weight x term, each term as its own objective computes it on the same batch."""
    model = testing.make_generic_mlm(tok)
    data = trajectories(tok)
    kw = dict(random_token_ratio=0.0, mask_ratio_exponent=0.0)
    combo = DDOTrainer(
        model,
        args=config(tmp_path, loss_type=["ddo", "path", "ntd", "certainty"], loss_weights=[0.5, 0.3, 2.0, 0.7], **kw),
        train_dataset=data,
        processing_class=tok,
    )
    batch = combo.data_collator([combo.train_dataset[i] for i in range(4)])
    loss = combo.compute_loss(combo.model.train(), batch)
    m = {k: v[-1] for k, v in combo._metrics["train"].items()}
    expected = 0.5 * m["loss_ddo"] + 0.3 * m["loss_path"] + 2.0 * m["loss_ntd"] + 0.7 * m["loss_certainty"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    ntd = DDOTrainer(model, args=config(tmp_path, loss_type="ntd", **kw), train_dataset=data, processing_class=tok)
    assert ntd.compute_loss(ntd.model.train(), batch).item() == pytest.approx(m["loss_ntd"], rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": ["foo"]}, "Invalid loss_type"),
        ({"loss_type": ["ntd", "ntd"]}, "distinct"),
        ({"loss_type": "t3d", "loss_weights": [1.0, 0.2]}, "preset"),
        ({"loss_type": ["ntd", "path"], "loss_weights": [1.0]}, "one weight"),
        ({"loss_type": "ntd", "ref_sync_steps": 10}, "no term that reads it"),
    ],
)
def test_bad_loss_types_name_the_fix(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **kwargs)


def _reference_logits(trainer, batch):
    with torch.no_grad(), trainer._reference(trainer.model) as ref:
        return trainer._completion_logits(ref, batch)


def test_peft_reference_after_sync_runs_without_dropout(tmp_path, tok):
    """The "ref" adapter copied at a sync scores deterministically in train mode, even when the policy uses dropout."""
    from peft import LoraConfig

    args = config(tmp_path, ref_sync_steps=1, max_steps=1, disable_dropout=False)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok),
        args=args,
        train_dataset=trajectories(tok),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, init_lora_weights=False),
    )
    trainer.train()
    assert "ref" in trainer.model.peft_config and trainer.model.peft_config["ref"].lora_dropout == 0.0
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.model.train()
    with torch.no_grad():
        policy = [trainer._completion_logits(trainer.model, batch) for _ in range(2)]
    assert not torch.equal(*policy)  # the policy still trains with its dropout
    torch.testing.assert_close(_reference_logits(trainer, batch), _reference_logits(trainer, batch), rtol=0, atol=0)
    assert trainer.model.training and trainer.model.active_adapter == "default"
    assert all(p.requires_grad for n, p in trainer.model.named_parameters() if ".default." in n)
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if ".ref." in n)


def test_peft_model_passed_in_is_its_own_reference(tmp_path, tok):
    """A PeftModel with a trained adapter is the teacher: the reference is a frozen copy of that adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model

    trained = get_peft_model(testing.make_generic_mlm(tok), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    trainer = DDOTrainer(trained, args=config(tmp_path), train_dataset=trajectories(tok), processing_class=tok)
    assert trainer.ref_model is None and "ref" in trainer.model.peft_config
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        policy = trainer._completion_logits(trainer.model, batch)
        with trainer.model.disable_adapter():
            base = trainer._completion_logits(trainer.model, batch)
    reference = _reference_logits(trainer, batch)
    torch.testing.assert_close(reference, policy)
    assert not torch.allclose(reference, base)
    trainer.train()  # the trained adapter moves, the reference stays the adapter passed in
    torch.testing.assert_close(_reference_logits(trainer, batch), reference)

    trained.save_pretrained(str(tmp_path / "adapter"))
    frozen = PeftModel.from_pretrained(testing.make_generic_mlm(tok), str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match="is_trainable=True"):
        DDOTrainer(frozen, args=config(tmp_path), train_dataset=trajectories(tok), processing_class=tok)


@pytest.mark.parametrize("pure", [False, True])
def test_full_fine_tuning_of_a_bf16_model_keeps_fp32_master_weights(tmp_path, tok, llada_dir, pure):
    """A LLaDA loaded in bfloat16 (the recipes' `dtype`), 3 steps at lr 1e-5 without warm-up: with fp32 master weights
    (the default) every weight that gets a gradient changes; AdamW on the bf16 weights themselves
    (`pure_half_precision=True`) rounds most of those updates away. The final save writes bfloat16 again."""
    args = config(
        tmp_path / str(pure), max_steps=3, learning_rate=1e-5, warmup_steps=0, weight_decay=0.0,
        trust_remote_code=True, model_init_kwargs={"dtype": "bfloat16"}, pure_half_precision=pure,
    )  # fmt: skip
    trainer = DDOTrainer(llada_dir, args=args, train_dataset=trajectories(tok), processing_class=tok)
    policy = trainer.model
    assert policy.dtype == (torch.bfloat16 if pure else torch.float32)
    assert trainer.ref_model.dtype == torch.float32 if not pure else torch.bfloat16  # fp32 compute: fp32 reference
    before = {n: p.detach().float().clone() for n, p in policy.named_parameters()}
    touched = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in policy.named_parameters()}

    def hook(name):
        def record(grad):
            touched[name] |= grad != 0

        return record

    hooks = [p.register_hook(hook(n)) for n, p in policy.named_parameters() if p.requires_grad]
    trainer.train()
    for h in hooks:
        h.remove()
    changed = sum(int(((p.detach().float() != before[n]) & touched[n]).sum()) for n, p in policy.named_parameters())
    with_grad = sum(int(t.sum()) for t in touched.values())
    assert with_grad > 1000
    if pure:
        assert changed / with_grad < 0.5, changed / with_grad
    else:
        assert changed == with_grad
        trainer.save_model(str(tmp_path / "student"))
        from safetensors import safe_open

        with safe_open(str(tmp_path / "student" / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        assert policy.dtype == torch.float32  # the trainer keeps training in fp32 after a save


def test_trainer_push_checks_the_student_before_uploading(tmp_path, tok, monkeypatch):
    """`trainer.push_to_hub()` runs the same check as `push_student_to_hub`: a student saved without its tokenizer
    is refused with the missing files named, and nothing is uploaded."""
    from huggingface_hub import HfApi

    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw))
    args = config(tmp_path, max_steps=1, push_to_hub=True, hub_model_id="me/student")
    trainer = DDOTrainer(testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok),
                         processing_class=tok)  # fmt: skip
    trainer.train()
    monkeypatch.setattr(type(tok), "save_pretrained", lambda self, *a, **kw: None)  # the tokenizer is not written
    with pytest.raises(ValueError, match="not a complete student"):
        trainer.push_to_hub()
    assert not uploads
