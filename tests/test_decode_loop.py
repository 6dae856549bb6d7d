"""The one decode loop (`generation.decode_prompts`) and what it stands on: one generator per row (a sampled prompt
decodes the same alone and in any padded batch), one definition of tokens per forward, one list of decoding fields.

Sampled decoding used to draw one batch-shaped tensor per step from one generator, so a sampled completion depended on
its batch mates, the batch size and the sort order; these tests fail on that decoder."""

import dataclasses

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from trl_t3d import DiffusionGenerationConfig, collect_trajectories, diffusion_generate, testing
from trl_t3d.evaluation import Task, evaluate_few_step
from trl_t3d.generation import decode_prompts
from trl_t3d.generation.config import DECODING_FIELDS, DIFFUSION_FIELDS, OUTPUT_FIELDS
from trl_t3d.generation.speed import forwards_in_step_map, tokens_per_forward

PROMPTS = ["1+1=", "12+34=", "7=", "99+100+7=", "5+5+5="]
SAMPLED = [
    dict(temperature=1.5, tokens_per_step=2),
    dict(temperature=1.0, remasking="random"),
    dict(temperature=0.8, threshold=0.2, top_k=5),  # rows finish their blocks after different numbers of forwards
    dict(temperature=0.8, factor=1.0, threshold_rule="fast_dllm"),
    dict(remasking="origin", schedule="dream", steps=4),  # Dream's random commits
    dict(temperature=1.0, schedule="dream", steps=4),  # Dream's counts: some steps commit nothing
]


@pytest.fixture(scope="module")
def generic(generic_dir):
    return AutoModelForCausalLM.from_pretrained(generic_dir).eval()


def _ids(tokenizer, prompts=PROMPTS):
    return [tokenizer(p)["input_ids"] for p in prompts]


def _left_pad(prompts, pad):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("settings", SAMPLED, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_a_sampled_prompt_decodes_the_same_alone_and_in_a_padded_batch(generic, tokenizer, settings, stop_at_eos):
    """One generator per row: row i draws from its own generator, and only at the forwards it runs alone."""
    eos = tokenizer.convert_tokens_to_ids("3")  # a token the untrained model writes often: EOS stops rows early
    config = DiffusionGenerationConfig(
        max_new_tokens=8, block_length=4, eos_token_id=eos, stop_at_eos=stop_at_eos, **settings
    )
    prompts, seeds = _ids(tokenizer), [11, 22, 33, 44, 55]
    input_ids, attention_mask = _left_pad(prompts, tokenizer.pad_token_id)
    out = diffusion_generate(
        generic, input_ids, attention_mask, config, generator=_generators(seeds), return_dict_in_generate=True
    )
    completions = out.sequences[:, input_ids.shape[1] :]
    for row, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = diffusion_generate(
            generic, torch.tensor([prompt]), None, config, generator=_generators([seed]), return_dict_in_generate=True
        )
        assert completions[row].tolist() == alone.sequences[0, len(prompt) :].tolist(), (row, settings)
        assert int(out.nfe_per_sample[row]) == alone.nfe  # what the row pays is what it pays alone
        # a list of one generator is that generator
        single = diffusion_generate(generic, torch.tensor([prompt]), None, config, generator=_generators([seed])[0])
        assert torch.equal(single, alone.sequences)
    assert len({tuple(c) for c in completions.tolist()}) > 1


def test_a_random_canvas_is_drawn_per_row(tokenizer):
    """DiffusionGemma's noise is uniform random tokens: each row's canvas comes from its own generator too."""
    model = testing.make_diffusion_gemma(tokenizer, canvas_length=4).eval()
    prompts, seeds = _ids(tokenizer)[:3], [5, 6, 7]
    input_ids, attention_mask = _left_pad(prompts, tokenizer.pad_token_id)
    config = dict(max_new_tokens=8, block_length=4, tokens_per_step=2, temperature=1.0)
    batched = diffusion_generate(model, input_ids, attention_mask, generator=_generators(seeds), **config)
    for row, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = diffusion_generate(model, torch.tensor([prompt]), generator=_generators([seed]), **config)
        assert batched[row, input_ids.shape[1] :].tolist() == alone[0, len(prompt) :].tolist()


def test_one_generator_per_row_is_checked(generic, tokenizer):
    input_ids, attention_mask = _left_pad(_ids(tokenizer)[:2], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="one per prompt"):
        diffusion_generate(generic, input_ids, attention_mask, generator=_generators([1]), max_new_tokens=4)


def test_decode_prompts_returns_in_input_order_whatever_the_batch_size(generic, tokenizer):
    """Sorted by length inside, back in input order; sampled prompts seeded by the prompt, so the batch size, the order
    and the batch mates change nothing; text up to the first EOS."""
    config = DiffusionGenerationConfig(max_new_tokens=8, block_length=4, temperature=1.0, tokens_per_step=2)
    prompts = _ids(tokenizer)
    seeds = [100 + i for i in range(len(prompts))]
    kwargs = dict(processing_class=tokenizer, return_text=True)
    one = decode_prompts(generic, prompts, config, batch_size=1, seeds=seeds, **kwargs)
    three = decode_prompts(generic, prompts, config, batch_size=3, seeds=seeds, **kwargs)
    backwards = decode_prompts(generic, prompts[::-1], config, batch_size=4, seeds=seeds[::-1], **kwargs)[::-1]
    strip = lambda out: [(o.completion_ids, o.nfe, o.text) for o in out]  # noqa: E731
    assert strip(one) == strip(three) == strip(backwards)
    eos = set(tokenizer.convert_tokens_to_ids([tokenizer.eos_token]))
    for out in three:
        assert len(out.completion_ids) == len(out.step_map) == 8 and out.committed == sum(s >= 0 for s in out.step_map)
        kept = next((i for i, t in enumerate(out.completion_ids) if t in eos), 8)
        assert out.text == tokenizer.decode(out.completion_ids[:kept], skip_special_tokens=True)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    assert [three[i].batch for i in order] == [0, 0, 0, 1, 1]  # shortest first
    assert len({three[i].batch_nfe for i in order[:3]}) == 1 and all(o.nfe <= o.batch_nfe for o in three)


def test_evaluate_few_step_samples_the_same_at_any_batch_size(generic, tokenizer):
    """A silent wrong result before: sampled accuracy depended on `batch_size` (one generator per budget)."""
    task = Task("t", PROMPTS, ["2", "46", "7", "206", "15"], verifier="number", max_new_tokens=8, block_length=4)
    kwargs = dict(temperature=1.5, show_progress=False, num_samples_logged=len(PROMPTS))
    reports = [evaluate_few_step(generic, tokenizer, task, [1, 2], batch_size=b, **kwargs) for b in (1, 2, 5)]
    samples = [[[s["completion"] for s in r["samples"]] for r in report["results"]] for report in reports]
    assert samples[0] == samples[1] == samples[2]
    nfe = [[(r["nfe"], r["tokens_per_forward"]) for r in report["results"]] for report in reports]
    assert nfe[0] == nfe[1] == nfe[2]


def test_collection_samples_the_same_at_any_batch_and_shard_size(generic, tokenizer):
    """Prompt i of the dataset samples with `seed + i`: batch and shard sizes change no trajectory."""
    prompts = datasets.Dataset.from_dict({"prompt": PROMPTS})
    config = DiffusionGenerationConfig(max_new_tokens=8, block_length=4, temperature=1.0)
    runs = [
        collect_trajectories(generic, tokenizer, prompts, config, batch_size=b, shard_size=s, show_progress=False)
        for b, s in ((1, 5), (3, 2), (5, 5))
    ]
    assert runs[0]["completion_ids"] == runs[1]["completion_ids"] == runs[2]["completion_ids"]
    assert runs[0]["step_map"] == runs[2]["step_map"]  # one batch each: the same forward indices


def test_tokens_per_forward_is_committed_tokens_per_forward_a_sample_ran(generic, tokenizer):
    """`nfe_per_sample` counts the forwards in which a row committed at least one token (what evaluation counted
    with a step callback before), and `tokens_per_forward` is kept tokens over them, not over batch x forwards."""
    eos = tokenizer.convert_tokens_to_ids("3")
    prompts = _ids(tokenizer)
    input_ids, attention_mask = _left_pad(prompts, tokenizer.pad_token_id)
    left, counts = [], []

    def row_forwards(step, canvas, undecided):  # the former `RowForwards` of evaluation
        left.append(undecided.sum(-1))

    out = diffusion_generate(
        generic, input_ids, attention_mask, max_new_tokens=8, block_length=8, threshold=0.3, eos_token_id=eos,
        output_step_map=True, return_dict_in_generate=True, step_callback=row_forwards,
    )  # fmt: skip
    left.append(torch.zeros_like(left[0]))
    counts = sum((after < before).long() for before, after in zip(left, left[1:]))
    assert out.nfe_per_sample.tolist() == counts.tolist()
    committed = (out.step_map >= 0).sum(-1)
    assert out.tokens_per_forward == tokens_per_forward(committed.tolist(), out.nfe_per_sample.tolist())
    assert out.tokens_per_forward == committed.sum().item() / out.nfe_per_sample.sum().item()
    assert tokens_per_forward([0], [0]) == 0.0
    assert forwards_in_step_map([0, 0, 2, 5, -1, -1]) == 3


def test_one_list_of_decoding_fields():
    """Derived from the config class; what the CLI, lm-eval's model arguments and the reports name come from it."""
    from trl_t3d.scripts.utils import DecodingArguments

    own = {k for k in vars(DiffusionGenerationConfig()) if k not in vars(DiffusionGenerationConfig.__base__())}
    assert set(DIFFUSION_FIELDS) == own
    assert set(DECODING_FIELDS) == (own - set(OUTPUT_FIELDS)) | {"max_new_tokens", "temperature", "top_k", "top_p"}
    assert {f.name for f in dataclasses.fields(DecodingArguments)} <= set(DECODING_FIELDS)
    assert DecodingArguments(tokens_per_step=2).generation_kwargs()["tokens_per_step"] == 2
    config = DiffusionGenerationConfig(max_new_tokens=8, block_length=4)
    assert set(config.to_diff_dict()) >= set(DIFFUSION_FIELDS) | {"max_new_tokens", "temperature"}
    with pytest.raises(ValueError, match="Unknown decoding arguments.*tokens_per_step"):
        from trl_t3d.generation.decode import resolve_generation_config

        resolve_generation_config(None, config, {"tokens_per_stepp": 2})
