"""One resolved model (`DiffusionLM`): one loader, one set of special ids, one prompt renderer for collection, training
and evaluation; and a causal LM is refused everywhere with the fix."""

import datasets
import pytest
from tokenizers import processors

import trl_t3d
from trl_t3d import (
    AutoModelForDiffusionLM,
    DDOConfig,
    DDOTrainer,
    DiffusionGenerationConfig,
    Task,
    add_diffusion_generation,
    collect_trajectories,
    diffusion_generate,
    evaluate_few_step,
    testing,
)
from trl_t3d.resolved import DiffusionLM, load_diffusion_lm


def bos_tokenizer():
    """The char tokenizer, adding BOS to plain text like most LLM tokenizers: renderers that disagree on special
    tokens or on the chat template give different ids."""
    tok = testing.make_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", tok.bos_token_id)]
    )
    assert tok("ab")["input_ids"][0] == tok.bos_token_id
    return tok


def ddo_args(tmp_path, **kwargs):
    return DDOConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=1,
        activation_checkpointing=False,
        disable_tqdm=True,
        **kwargs,
    )


PROMPTS = {
    "plain": "12+34=",
    "conversation": [{"role": "system", "content": "S"}, {"role": "user", "content": "12+34="}],
}


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_a_prompt_is_the_same_ids_in_collection_training_and_evaluation(tmp_path, monkeypatch, kind):
    tok = bos_tokenizer()
    resolved = DiffusionLM.from_model(testing.make_generic_mlm(tok), tok)
    prompt = PROMPTS[kind]
    expected = resolved.render_prompt(prompt)
    if kind == "plain":
        assert expected == tok(prompt)["input_ids"]  # TRL's rule: plain text as it is, with the tokenizer's BOS
    else:
        assert tok.decode(expected) == "<|system|>S<|user|>12+34=<|assistant|>"

    # collection
    collected = collect_trajectories(
        resolved,
        None,
        datasets.Dataset.from_dict({"prompt": [prompt]}),
        DiffusionGenerationConfig(max_new_tokens=4, block_length=4),
        show_progress=False,
    )
    assert collected[0]["prompt_ids"] == expected

    # training on text trajectories (prompt text + completion text + token-level step map)
    text = datasets.Dataset.from_list([{"prompt": prompt, "completion": "46", "step_map": [0, 1], "block_length": 4}])
    trainer = DDOTrainer(resolved, args=ddo_args(tmp_path), train_dataset=text)
    assert trainer.train_dataset[0]["prompt_ids"] == expected

    # evaluation: what `evaluate_few_step` hands the decoder
    fed = []

    def spy(model, input_ids, attention_mask=None, *args, **kwargs):
        fed.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask))
        return diffusion_generate(model, input_ids, attention_mask, *args, **kwargs)

    monkeypatch.setattr(trl_t3d.generation, "diffusion_generate", spy)
    task = Task("t", [prompt], ["46"], "exact", max_new_tokens=4, block_length=4)
    assert task.prompt_ids(resolved) == task.prompt_ids(tok) == [expected]
    evaluate_few_step(resolved, None, task, tokens_per_step=[1], show_progress=False)
    assert fed == [expected]


def test_load_diffusion_lm_resolves_once(generic_dir):
    resolved = load_diffusion_lm(generic_dir)
    tok = resolved.tokenizer
    assert isinstance(resolved.model, trl_t3d.DiffusionLMGenerationMixin) and resolved.adapter.name == "generic"
    assert tok.padding_side == "left"
    assert (resolved.mask_token_id, resolved.pad_token_id) == (tok.mask_token_id, tok.pad_token_id)
    assert resolved.eos_token_ids == [tok.eos_token_id] and resolved.end_of_turn_token_ids == []
    assert resolved.adapter is resolved.model.get_diffusion_adapter()  # the model and the object share one adapter
    assert DiffusionLM.from_model(resolved) is resolved
    assert DiffusionLM.from_model(resolved.model, tok).adapter is resolved.adapter
    with pytest.raises(ValueError, match="carries its own tokenizer"):
        DiffusionLM.from_model(resolved, testing.make_tokenizer())
    with pytest.raises(ValueError, match="carries its own adapter"):
        DiffusionLM.from_model(resolved, mask_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="No tokenizer"):
        DiffusionLM.from_model(testing.make_generic_mlm())
    with pytest.raises(ValueError, match="renders to the mask token"):
        resolved.render_prompt("a<|mask|>b")


def test_family_end_of_turn_tokens_are_resolved_once(tokenizer):
    """LLaDA-Instruct ends a turn with <|eot_id|> as well as EOS: both stop decoding and cut completions."""
    from trl_t3d.adapters import LLaDAAdapter

    tok = testing.make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    adapter = LLaDAAdapter(None, tokenizer=tok)
    assert adapter.end_of_turn_token_ids == [eot] and adapter.eos_token_ids == [tok.eos_token_id, eot]


# ---------------------------------------------------------------------------------------------- causal models
def causal_llama(tok, with_mask_id):
    mask_token_id = tok.mask_token_id if with_mask_id else None
    return testing.tiny_llama(
        len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, mask_token_id=mask_token_id
    ).eval()


@pytest.mark.parametrize("with_mask_id", [True, False])
def test_a_causal_model_is_refused_everywhere_with_the_fix(tmp_path, tokenizer, with_mask_id):
    """A standard `LlamaForCausalLM` (causal attention) would train and decode nonsense as a diffusion LM."""
    fix = r"set `model.config.is_causal = False`"
    model = causal_llama(tokenizer, with_mask_id)
    ids = tokenizer(["1+2="], return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match=fix):
        diffusion_generate(model, ids, processing_class=tokenizer, max_new_tokens=4, block_length=4)
    with pytest.raises(ValueError, match=fix):
        collect_trajectories(
            model,
            tokenizer,
            datasets.Dataset.from_dict({"prompt": ["1+2="]}),
            DiffusionGenerationConfig(max_new_tokens=4, block_length=4),
            show_progress=False,
        )
    trajectories = datasets.Dataset.from_list(
        [{"prompt_ids": [10, 11], "completion_ids": [12, 13], "step_map": [0, 1], "block_length": 2}]
    )
    with pytest.raises(ValueError, match=fix):
        DDOTrainer(model, args=ddo_args(tmp_path), train_dataset=trajectories, processing_class=tokenizer)
    with pytest.raises(ValueError, match=fix):
        add_diffusion_generation(model, processing_class=tokenizer)
    with pytest.raises(ValueError, match=r'adapter="..."'):  # the other fix: name a published family
        evaluate_few_step(model, tokenizer, Task("t", ["1+2="], ["3"]), [1], max_new_tokens=4, block_length=4)
    model.save_pretrained(tmp_path / "causal")
    tokenizer.save_pretrained(tmp_path / "causal")
    with pytest.raises(ValueError, match=fix):
        load_diffusion_lm(str(tmp_path / "causal"))
    with pytest.raises(ValueError, match=fix):
        AutoModelForDiffusionLM.from_pretrained(str(tmp_path / "causal"), mask_token_id=tokenizer.mask_token_id)
    with pytest.raises(ValueError, match=fix):  # naming the generic family does not make the attention bidirectional
        diffusion_generate(model, ids, adapter="generic", processing_class=tokenizer, max_new_tokens=4)

    # the fix the error names works
    model.config.is_causal = False
    out = diffusion_generate(model, ids, processing_class=tokenizer, max_new_tokens=4, block_length=4)
    assert out.shape == (1, ids.shape[1] + 4)
    assert not (out[:, ids.shape[1] :] == tokenizer.mask_token_id).any()
    assert DiffusionLM.from_model(model, tokenizer).adapter.name == "generic"
