"""The lm-evaluation-harness backend (`diffusion_lm`), offline.

- A local task in GSM8K's format (JSONL + a YAML copied from lm-eval's `gsm8k.yaml`: same prompt, stop sequences,
  filters and metric) on a toy model trained for a few seconds to answer 6 of its 8 questions: the backend's accuracy,
  NFE and tokens per forward equal `evaluate_few_step`'s on the same prompts and settings, at every budget.
- The Monte-Carlo masked log-likelihood converges to the exact expectation of the same estimator, computed here by
  enumerating every mask count and subset with plain forward passes (bidirectional, and block-wise for SDAR).
- `python -m trl_t3d.lm_eval` under `accelerate launch` with 2 processes gives the single-process numbers.
"""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance

from trl_t3d import AutoModelForDiffusionLM, testing
from trl_t3d.adapters import get_adapter
from trl_t3d.evaluation import Task, evaluate_few_step
from trl_t3d.evaluation.likelihood import (
    block_spans,
    masked_loglikelihood,
    random_subset_masks,
    sample_mask_states,
    stratified_mask_counts,
)
from trl_t3d.evaluation.lm_eval.sweep import _metric_key
from trl_t3d.evaluation.lm_eval_backend import (
    DiffusionLMEval,
    evaluate_lm_eval_tasks,
    lm_eval_task_manager,
)

TASK = "gsm8k_local"
PAIRS = [(12, 34), (5, 7), (40, 2), (9, 9), (23, 51), (7, 80), (30, 5), (50, 9)]
TRAINED = 6  # the toy learns the first 6 questions; the last 2 are unseen, their answers of digits it never wrote
# lm-eval's gsm8k.yaml (0.4.13) with a local JSON dataset, zero-shot and an 8-token budget.
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: 8
num_fewshot: 0
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 3.0
"""


def _clean(text):
    """GSM8K's exact_match normalization (`regexes_to_ignore`, `ignore_case`)."""
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        text = re.sub(pattern, "", text)
    return text.lower()


def strict_match(completion, reference):
    """GSM8K's strict-match filter + exact_match, as a `Task` verifier."""
    found = re.search(r"#### (\-?[0-9\.\,]+)", completion)
    return _clean(found.group(1) if found else "[invalid]") == _clean(str(reference))


def flexible_extract(completion, reference):
    """GSM8K's flexible-extract filter (last number-like match) + exact_match, as a `Task` verifier."""
    found = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", completion)
    last = [group for group in found[-1] if group][0] if found else "[invalid]"
    return _clean(last) == _clean(str(reference))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(model, tokenizer, saved dir): a tiny bidirectional LM trained to answer the first 6 questions."""
    from trl_t3d.toy.pretraining import pretrain_masked_diffusion

    tokenizer = testing.make_tokenizer()
    model = testing.make_generic_mlm(tokenizer, hidden_size=32, num_layers=2, seed=0)
    train = Task(
        "train",
        [f"Question: {a}+{b}?\nAnswer:" for a, b in PAIRS[:TRAINED]],
        [a + b for a, b in PAIRS[:TRAINED]],
        targets=[f"#### {a + b}" for a, b in PAIRS[:TRAINED]],
        max_new_tokens=8,
    )
    pretrain_masked_diffusion(
        model, tokenizer, [train], 150, batch_size=16, learning_rate=1e-2, warmup_steps=10, weighting="mean",
        show_progress=False,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("toy")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer, str(directory)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A folder with the GSM8K-format JSONL and its task YAML (absolute paths; datasets cache inside)."""
    root = tmp_path_factory.mktemp("lm_eval_task")
    data = root / "test.jsonl"
    rows = [{"question": f"{a}+{b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"} for a, b in PAIRS]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "tasks").mkdir()
    (root / "tasks" / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data, cache=root / "cache"))
    return str(root / "tasks")


def few_step_task(verifier):
    prompts = [f"Question: {a}+{b}?\nAnswer:" for a, b in PAIRS]
    return Task(TASK, prompts, [a + b for a, b in PAIRS], verifier=verifier)


SETTINGS = dict(max_new_tokens=8, block_length=8)
BUDGETS = [1, 2, 4, 8]


# ------------------------------------------------------------------------------------------------ parity
def test_accuracy_nfe_and_texts_equal_evaluate_few_step(toy, task_dir):
    model, tokenizer, _ = toy
    reports = evaluate_lm_eval_tasks(model, tokenizer, TASK, BUDGETS, include_path=task_dir, batch_size=3, **SETTINGS)
    assert len(reports) == 1 and reports[0]["task"] == TASK and reports[0]["metric"] == "exact_match,strict-match"
    ours = {r["tokens_per_step"]: r for r in reports[0]["results"]}
    kwargs = dict(generation_config=dict(SETTINGS), batch_size=3, show_progress=False)
    strict = evaluate_few_step(model, tokenizer, few_step_task(strict_match), BUDGETS, **kwargs, num_samples_logged=8)
    flexible = evaluate_few_step(model, tokenizer, few_step_task(flexible_extract), BUDGETS, **kwargs)
    for reference, reference_flexible in zip(strict["results"], flexible["results"]):
        got = ours[reference["tokens_per_step"]]
        assert got["accuracy"] == reference["accuracy"]
        assert got["metrics"]["exact_match,flexible-extract"] == reference_flexible["accuracy"]
        assert got["nfe"] == reference["nfe"] and got["tokens_per_forward"] == reference["tokens_per_forward"]
        assert got["nfe_per_batch"] == reference["nfe_per_batch"]
    # the comparison means something: the toy answers its 6 trained questions at one token per step, not the others
    assert strict["results"][0]["accuracy"] == TRAINED / len(PAIRS)
    assert strict["results"][0]["nfe"] == 8 and strict["results"][-1]["nfe"] == 1

    # the same completions, text for text (lm-eval's logged responses, at 2 tokens per step)
    lm = DiffusionLMEval(model=model, tokenizer=tokenizer, tokens_per_step=2, batch_size=3, **SETTINGS)
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=lm_eval_task_manager([TASK], task_dir))
    texts = {s["doc_id"]: s["resps"][0][0] for s in out["samples"][TASK] if s["filter"] == "strict-match"}
    assert [texts[i] for i in range(len(PAIRS))] == [s["completion"] for s in strict["results"][1]["samples"]]
    speed = out["config"]["diffusion_lm"]["tasks"][TASK]
    assert speed["num_samples"] == len(PAIRS) and speed["nfe"] == strict["results"][1]["nfe"]


def test_generate_until_stop_sequences_and_settings(toy):
    """Stop sequences cut the text; the task's max_gen_toks becomes a block-multiple canvas; model args win."""
    model, tokenizer, _ = toy
    lm = DiffusionLMEval(model=model, tokenizer=tokenizer, block_length=4, tokens_per_step=4)
    prompt = "Question: 12+34?\nAnswer:"
    free, cut = lm.generate_until(
        [
            Instance("generate_until", {}, (prompt, {"until": [], "max_gen_toks": 6}), 0, ("t", 0, 1)),
            Instance("generate_until", {}, (prompt, {"until": ["#", "Question:"], "max_gen_toks": 6}), 0, ("t", 1, 1)),
        ]
    )
    assert free.startswith("####") and cut == ""  # "#" stops the second at once
    config, until = lm._request_config({"until": "x", "max_gen_toks": 6, "temperature": 0.7, "do_sample": True})
    assert (config.max_new_tokens, config.temperature, until) == (8, 0.7, ["x"])
    fixed = DiffusionLMEval(model=model, tokenizer=tokenizer, block_length=4, temperature=0.0, max_new_tokens=12)
    config, _ = fixed._request_config({"max_gen_toks": 6, "temperature": 0.7, "do_sample": True})
    assert (config.max_new_tokens, config.temperature) == (12, 0.0)
    parallel = DiffusionLMEval(model=model, tokenizer=tokenizer, threshold=0.9, remasking="margin", cache="prefix")
    info = parallel.get_model_info()["diffusion_lm"]["generation_config"]
    assert (info["threshold"], info["remasking"], info["cache"]) == (0.9, "margin", "prefix")
    speed = lm.speed_metrics()["t"]
    assert (speed["num_samples"], speed["tokens_per_step"], speed["nfe_per_batch"]) == (2, 4, 2)
    assert speed["nfe"] <= 2 and speed["tokens_per_forward"] > 1


def test_prompts_follow_the_project_rendering_rule(toy):
    """Plain text gets the tokenizer's special tokens, chat-template output none (it carries them): the token ids
    `evaluate_few_step` decodes from, and a log-likelihood split that keeps BOS in the context."""
    from tokenizers.processors import TemplateProcessing

    model, _, _ = toy
    tokenizer = testing.make_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", bos)]
    )
    lm = DiffusionLMEval(model=model, tokenizer=tokenizer)
    task = few_step_task(strict_match)
    question = task.prompts[0]
    plain = lm.tok_encode(question)
    assert plain[0] == bos and plain == task.prompt_ids(tokenizer)[0]
    chat = lm.apply_chat_template([{"role": "user", "content": question}])
    assert lm.tok_encode(chat) == task.prompt_ids(tokenizer, apply_chat_template=True)[0]
    assert lm.tok_encode(chat).count(bos) == 0  # the template has no BOS and none is added
    context, continuation = lm._encode_pair(question + " ", "#### 46")
    assert context == plain and continuation == tokenizer(" #### 46", add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------------ likelihood
def test_mask_sampling_is_stratified_and_weighted():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        counts = stratified_mask_counts(6, 3, generator)
        assert sorted(counts.tolist()) == [1, 1, 2, 2, 3, 3]  # spread evenly, each row uniform on 1..3
    masks = random_subset_masks(torch.tensor([1, 2, 3, 0]), 3, generator)
    assert masks.sum(-1).tolist() == [1, 2, 3, 0]
    mask, weight = sample_mask_states(64, 5, 2, generator)
    for start, end in block_spans(5, 2):  # blocks (0, 2), (2, 4), (4, 5)
        count = mask[:, start:end].sum(-1)
        assert (count >= 1).all()
        expected = mask[:, start:end] * ((end - start) / count.double())[:, None]
        assert torch.equal(weight[:, start:end], expected)
    assert block_spans(5, None) == [(0, 5)]


def _exact_distribution(model, adapter, context, target, block_length):
    """Every (probability, per-sample value) of the estimator, one list per block, from plain forward passes.

    Bidirectional: the raw model over `[context, target with S masked]`. Block-causal: the decoding layout (earlier
    blocks clean, later blocks masked), not the `[c, y, y_t]` layout the estimator uses.
    """
    blocks = []
    for start, end in block_spans(len(target), block_length):
        size, dist = end - start, []
        for count in range(1, size + 1):
            subsets = list(itertools.combinations(range(start, end), count))
            for subset in subsets:
                state = [adapter.mask_token_id if i in subset or i >= end else t for i, t in enumerate(target)]
                with torch.no_grad():
                    if block_length is None:
                        logits = model(input_ids=torch.tensor([context + state])).logits[0, len(context) :]
                    else:
                        logits = adapter.completion_logits(
                            model, torch.tensor([context]), None, torch.tensor([state]), block_length=block_length
                        )[0]
                logp = torch.log_softmax(logits.double(), -1)
                value = size / count * sum(logp[i, target[i]].item() for i in subset)
                dist.append((1 / size / len(subsets), value))
        blocks.append(dist)
    mean = sum(p * v for dist in blocks for p, v in dist)
    variance = sum(sum(p * v * v for p, v in d) - sum(p * v for p, v in d) ** 2 for d in blocks)
    return mean, variance**0.5


@pytest.mark.parametrize("family", ["generic", "sdar"])
def test_monte_carlo_loglikelihood_converges_to_exact_expectation(family, tokenizer, sdar_dir):
    if family == "generic":
        model, block_length = testing.make_generic_mlm(tokenizer, seed=1), None
    else:
        model, block_length = AutoModelForDiffusionLM.from_pretrained(sdar_dir, trust_remote_code=True), 2
    with torch.no_grad():  # sharper predictions, so that which positions are masked matters
        model.get_output_embeddings().weight.mul_(20)
    adapter = get_adapter(model, tokenizer=tokenizer)
    context = tokenizer("12+34=", add_special_tokens=False)["input_ids"]
    target = tokenizer("461", add_special_tokens=False)["input_ids"]
    assert len(target) == 3 and adapter.block_causal == (family == "sdar")
    exact, sigma = _exact_distribution(model, adapter, context, target, block_length)
    assert sigma > 0.05  # the estimator varies with the draws (numerical noise is ~1e-6): the test can fail

    def errors(num_samples):
        return [
            abs(
                masked_loglikelihood(
                    model,
                    adapter,
                    context,
                    target,
                    num_samples=num_samples,
                    batch_size=1024,
                    block_length=block_length,
                    generator=torch.Generator().manual_seed(seed),
                )
                - exact
            )
            for seed in range(6)
        ]

    few, many = errors(16), errors(2048)
    assert sum(many) / 6 < sum(few) / 6 / 3  # 128x the samples: ~11x smaller error expected
    assert max(many) < 4 * sigma / 2048**0.5  # within 4 standard errors of the exact expectation


def test_loglikelihood_requests_and_is_greedy(toy):
    model, tokenizer, _ = toy
    lm = DiffusionLMEval(model=model, tokenizer=tokenizer, mc_num=64, mc_batch_size=64)
    prompt = "Question: 12+34?\nAnswer:"
    requests = [
        Instance("loglikelihood", {}, (prompt, "#### 46"), 0, ("t", 0, 1)),
        Instance("loglikelihood", {}, (prompt, "#### 47"), 0, ("t", 0, 1)),
        Instance("loglikelihood", {}, (prompt, "#### 46"), 0, ("t", 1, 1)),
    ]
    (right, greedy_right), (wrong, greedy_wrong), again = lm.loglikelihood(requests)
    assert greedy_right and not greedy_wrong and right > wrong
    assert again == (right, greedy_right)  # seeded by the request: the same estimate on any process, in any order
    # the estimate is of the bound of these tokens: the exact expectation, enumerated with plain forward passes
    context = tokenizer(prompt)["input_ids"]
    continuation = tokenizer("#### 46", add_special_tokens=False)["input_ids"]
    exact, sigma = _exact_distribution(model, lm.adapter, context, continuation, None)
    assert abs(right - exact) < max(4 * sigma / 64**0.5, 1e-4)
    exact_wrong, _ = _exact_distribution(
        model, lm.adapter, context, tokenizer("#### 47", add_special_tokens=False)["input_ids"], None
    )
    assert abs(exact - exact_wrong) > 4 * sigma / 64**0.5  # the tolerance tells the two continuations apart
    speed = lm.speed_metrics()["t"]
    assert speed["num_likelihood_requests"] == 3 and speed["likelihood_forwards"] == 3 * (1 + 7)  # 1 MC + 7 greedy

    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("12+34",), 0, ("r", 0, 1))])
    tokens = lm.tok_encode("12+34")
    assert rolling == masked_loglikelihood(
        model, lm.adapter, [lm.prefix_token_id], tokens, num_samples=64, batch_size=64,
        generator=lm._request_generator("12+34", "0"),
    )  # fmt: skip
    short = DiffusionLMEval(model=model, tokenizer=tokenizer, mc_num=8, mc_batch_size=8, max_length=3)
    (windows,) = short.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("12+34",), 0, ("r", 0, 1))])
    assert windows < 0 and short.speed_metrics()["r"]["likelihood_forwards"] == 3  # 2 + 2 + 1 tokens


def test_block_causal_family_decodes_and_scores_in_its_blocks(sdar_dir):
    """SDAR from its directory: blocks of its `block_size` for decoding (the canvas rounds up to them) and for the
    block-wise bound."""
    lm = DiffusionLMEval(sdar_dir, tokens_per_step=2, mc_num=8, mc_batch_size=8, check_greedy=False)
    block = getattr(lm.model.config, "block_size", None) or lm.adapter.default_block_length  # SDAR: 4
    assert lm.adapter.block_causal and lm.generation_config.block_length == block
    assert lm._likelihood_block_length() == block
    (text,) = lm.generate_until(
        [Instance("generate_until", {}, ("12+34=", {"until": [], "max_gen_toks": 5}), 0, ("s", 0, 1))]
    )
    # the text a plain loop decodes: 2 blocks of 4, 2 tokens per step, each step a full block-causal forward
    tokenizer, mask = lm.tokenizer, lm.adapter.mask_token_id
    context = tokenizer("12+34=")["input_ids"]

    def block_logits(state, block_length=block):
        return lm.adapter.completion_logits(
            lm.model, torch.tensor([context]), None, torch.tensor([state]), block_length=block_length
        )[0]

    ids = _naive_greedy(lm.model, mask, context, 2 * block, per_step=2, block_logits=block_logits, block=block)
    eos = [i for i, t in enumerate(ids) if t in set(lm.resolved.eos_token_ids)]
    assert text == tokenizer.decode(ids[: eos[0] if eos else None], skip_special_tokens=True)
    assert lm.speed_metrics()["s"]["nfe"] <= -(-5 // block) * block / 2
    # likelihood in the same blocks: the exact expectation of the block-wise bound, and is_greedy of what the plain
    # loop decodes one token per step (True) or of one token changed (False)
    scorer = DiffusionLMEval(sdar_dir, mc_num=256, mc_batch_size=256)
    greedy_ids = _naive_greedy(lm.model, mask, context, block, block_logits=block_logits, block=block)
    other_ids = greedy_ids[:-1] + [(greedy_ids[-1] + 1) % 50]
    exact, sigma = _exact_distribution(lm.model, lm.adapter, context, greedy_ids, block)
    requests = [
        Instance("loglikelihood", {}, ("12+34=", tokenizer.decode(ids)), 0, ("s", 0, 1))
        for ids in (greedy_ids, other_ids)
    ]
    assert [tokenizer("12+34=" + r.args[1])["input_ids"][len(context) :] for r in requests] == [greedy_ids, other_ids]
    (logp, greedy), (_, other_greedy) = scorer.loglikelihood(requests)
    assert abs(logp - exact) < max(4 * sigma / 256**0.5, 1e-4) and sigma > 0.01
    assert greedy is True and other_greedy is False


def test_uniform_noise_family_refuses_loglikelihood(tokenizer):
    class Uniform:
        noise, name = "uniform", "diffusion_gemma"

    with pytest.raises(ValueError, match="uniform random tokens"):
        masked_loglikelihood(testing.make_generic_mlm(tokenizer), Uniform(), [1], [2])


def test_errors_name_the_fix(toy):
    model, tokenizer, directory = toy
    with pytest.raises(ValueError, match="Unknown `diffusion_lm` model arguments"):
        DiffusionLMEval(model=model, tokenizer=tokenizer, tokens_per_stp=2)
    with pytest.raises(ValueError, match=r"model arguments \['num_beams'\]"):
        DiffusionLMEval(model=model, tokenizer=tokenizer, num_beams=4)  # a GenerationConfig field no decoder reads
    with pytest.raises(ValueError, match="exactly one of `pretrained`"):
        DiffusionLMEval(directory, model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="batch_size=auto"):
        DiffusionLMEval(model=model, tokenizer=tokenizer, batch_size="auto")
    with pytest.raises(ValueError, match="tokens_per_step"):
        DiffusionLMEval(model=model, tokenizer=tokenizer, block_length=4, tokens_per_step=8)
    with pytest.raises(ValueError, match="set per budget"):
        evaluate_lm_eval_tasks(model, tokenizer, TASK, [1], steps=4)
    results = {"alias": "humaneval", "pass@1,create_test": 0.5, "pass@1_stderr,create_test": 0.1}
    config = {"metric_list": [{"metric": len}], "filter_list": [{"name": "create_test"}]}  # a `!function` metric
    assert _metric_key("humaneval", results, config, None) == "pass@1,create_test"
    assert _metric_key("humaneval", results, config, "pass@1") == "pass@1,create_test"
    with pytest.raises(ValueError, match=r"no metric 'exact_match,create_test'. Pick one of \['pass@1,create_test'\]"):
        _metric_key("humaneval", results, config, "exact_match")
    bare = testing.make_tokenizer()
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        DiffusionLMEval(model=model, tokenizer=bare).apply_chat_template([{"role": "user", "content": "hi"}])


def test_loads_pretrained_directory(toy):
    """`pretrained=DIR` goes through `AutoModelForDiffusionLM` and the tokenizer beside it."""
    model, _, directory = toy
    lm = DiffusionLMEval(directory, tokens_per_step=2, block_length=4, dtype="float32")
    assert lm.adapter.name == "generic" and lm.tokenizer.padding_side == "left"
    assert torch.equal(lm.model.get_output_embeddings().weight, model.get_output_embeddings().weight)


# ------------------------------------------------------------------------------------------------ command line
def test_trl_t3d_eval_with_lm_eval_tasks_writes_one_report(toy, task_dir, tmp_path):
    """`trl-t3d eval --lm_eval_tasks ... --task ...`: built-in and lm-eval tasks in one JSON + table + plot."""
    from trl_t3d import cli

    _, _, directory = toy
    out = tmp_path / "report"
    reports = cli.run(
        "eval",
        [
            "--model_name_or_path", directory, "--lm_eval_tasks", TASK, "--lm_eval_include_path", task_dir,
            "--task", "arithmetic", "--max_samples", "4", "--tokens_per_step", "1", "4", "--max_new_tokens", "8",
            "--block_length", "8", "--batch_size", "3", "--output_dir", str(out),
        ],
    )  # fmt: skip
    assert [r["task"] for r in reports] == ["arithmetic", TASK]
    saved = json.loads((out / "eval_report.json").read_text())
    assert [r["task"] for r in saved["reports"]] == ["arithmetic", TASK] and saved["model_name"] == directory
    ours = saved["reports"][1]
    assert ours["metric"] == "exact_match,strict-match" and [r["tokens_per_step"] for r in ours["results"]] == [1, 4]
    assert ours["results"][0]["accuracy"] == TRAINED / len(PAIRS) and ours["results"][0]["nfe"] == 8
    assert ours["results"][1]["nfe"] == 2 and ours["results"][1]["tokens_per_forward"] == 4
    table = (out / "eval_report.md").read_text()
    assert f"| {directory} | {TASK} | 75.0 (8.0) |" in table and saved["table"] == table.strip()
    assert (out / "eval_report.png").stat().st_size > 0


def _launch_two_processes(directory, task_dir, out, model_args, *extra):
    """`accelerate launch -m trl_t3d.lm_eval` with 2 CPU processes on 7 questions; lm-eval's results JSON."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trl_t3d.lm_eval",
        "--model", "diffusion_lm", "--model_args", f"pretrained={directory},{model_args}", "--tasks", TASK,
        "--include_path", task_dir, "--batch_size", "3", "--limit", "7", "--output_path", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(out.parent / "hf")}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(out.parent))
    assert result.returncode == 0, result.stderr[-3000:]
    (saved,) = list(out.rglob("results_*.json"))
    return json.loads(saved.read_text())


@pytest.mark.accelerate_launch
def test_cli_under_accelerate_launch_two_processes(toy, task_dir, tmp_path):
    """`accelerate launch -m trl_t3d.lm_eval` (2 CPU processes): the same accuracy and speed as one process.

    7 questions: one process gets 4 and the other 3 plus lm-eval's padding copy, which the speed records skip."""
    model, tokenizer, directory = toy
    model_args = "tokens_per_step=4,max_new_tokens=8,block_length=8"
    results = _launch_two_processes(directory, task_dir, tmp_path / "out", model_args)
    reference = evaluate_few_step(
        model, tokenizer, few_step_task(strict_match), [4], generation_config=dict(SETTINGS), num_examples=7,
        show_progress=False,
    )["results"][0]  # fmt: skip
    assert results["results"][TASK]["exact_match,strict-match"] == reference["accuracy"]
    info = results["config"]["diffusion_lm"]
    assert info["world_size"] == 2
    speed = info["tasks"][TASK]
    assert speed["num_samples"] == 7  # both processes' samples, not lm-eval's padding copy
    assert speed["nfe"] == reference["nfe"] and speed["tokens_per_forward"] == reference["tokens_per_forward"]
    # the processes decode side by side: the wall time is the longer of their times, below their sum
    assert 0 < speed["wall_time_s"] < speed["decode_time_s"]
    assert speed["samples_per_s"] == pytest.approx(7 / speed["decode_wall_time_s"])


@pytest.mark.accelerate_launch
def test_sampled_texts_under_two_processes_equal_one_process(toy, task_dir, tmp_path):
    """Sampling (temperature 2) under 2 processes writes, request for request, the texts one process writes."""
    model, tokenizer, directory = toy
    model_args = "tokens_per_step=2,max_new_tokens=8,block_length=8,temperature=2.0"
    _launch_two_processes(directory, task_dir, tmp_path / "out", model_args, "--log_samples")
    (logged,) = list((tmp_path / "out").rglob(f"samples_{TASK}_*.jsonl"))
    samples = [json.loads(line) for line in logged.read_text().splitlines()]
    samples = sorted((s for s in samples if s["filter"] == "strict-match"), key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(7))
    requests = [
        Instance("generate_until", {}, (s["arguments"]["gen_args_0"]["arg_0"], s["arguments"]["gen_args_0"]["arg_1"]),
                 s["doc_id"], (TASK, s["doc_id"], 1))
        for s in samples
    ]  # fmt: skip
    one = DiffusionLMEval(model=model, tokenizer=tokenizer, batch_size=3, **dict(SETTINGS), tokens_per_step=2,
                          temperature=2.0).generate_until(requests)  # fmt: skip
    assert [s["resps"][0][0] for s in samples] == one
    assert len(set(one)) > 1


def test_wrapper_indexes_only_the_include_path_that_holds_the_tasks(task_dir, monkeypatch):
    """With `--include_path` holding every `--tasks` name, lm-eval's thousands of built-in task files are not indexed
    (5-20 s per process); with a built-in task among them lm-eval's own `TaskManager` runs, and it is restored after."""
    import lm_eval.__main__
    import lm_eval.tasks

    from trl_t3d import lm_eval as wrapper

    original, seen = lm_eval.tasks.TaskManager, []

    def cli_evaluate():
        manager_class = lm_eval.tasks.TaskManager
        if manager_class is original:
            seen.append("lm-eval's")
        else:
            manager = manager_class(include_path=task_dir)
            seen.append((TASK in manager.all_tasks, "gsm8k" in manager.all_tasks))

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", cli_evaluate)
    for tasks in (TASK, f"{TASK},gsm8k"):
        monkeypatch.setattr(sys, "argv", ["trl_t3d.lm_eval", "--model", "diffusion_lm", "--tasks", tasks,
                                          "--include_path", task_dir])  # fmt: skip
        wrapper.main()
    assert seen == [(True, False), "lm-eval's"]
    assert lm_eval.tasks.TaskManager is original


def test_wrapper_module_registers_the_model(monkeypatch):
    """`python -m trl_t3d.lm_eval` is lm-eval's own command line, with `diffusion_lm` next to lm-eval's models."""
    import lm_eval.__main__
    from lm_eval.api.registry import get_model

    from trl_t3d import lm_eval as wrapper

    ran = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: ran.append(True))
    wrapper.main()
    assert ran == [True]
    assert get_model("diffusion_lm") is DiffusionLMEval and get_model("hf").__name__ == "HFLM"


# ------------------------------------------------------------------------------------------------ issue 20, item 8
def _naive_greedy(model, mask_id, context, length, per_step=1, block_logits=None, block=None):
    """Plain-loop decoding, written here without the decoder: every step one full forward, the `per_step` most
    confident undecided positions of the current block (probability of the argmax, the mask never proposed) commit
    their argmax. `block_logits(state)` gives the completion's logits (default: the raw model over [context, state])."""
    state = [mask_id] * length
    block = block or length
    for start in range(0, length, block):
        while mask_id in state[start : start + block]:
            with torch.no_grad():
                if block_logits is None:
                    logits = model(input_ids=torch.tensor([context + state])).logits[0, len(context) :]
                else:
                    logits = block_logits(state)
            probs = torch.softmax(logits.double(), -1)
            probs[:, mask_id] = -1.0  # never proposed
            confidence, tokens = probs.max(-1)
            undecided = [i for i in range(start, start + block) if state[i] == mask_id]
            for i in sorted(undecided, key=lambda i: -confidence[i].item())[:per_step]:
                state[i] = int(tokens[i])
    return state


@pytest.mark.parametrize(
    "settings",
    [
        dict(factor=100.0),  # the factor rule commits every position at once
        dict(factor=100.0, threshold_rule="fast_dllm"),
        dict(threshold=0.01),
        dict(cache="prefix"),
        dict(cache="dual"),
        dict(remasking="origin", schedule="dream"),  # Dream's random commits, from the global RNG when unseeded
        dict(remasking="random"),
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_is_greedy_decodes_one_token_per_step_exactly_and_draws_nothing(toy, settings, monkeypatch):
    """`is_greedy` asks whether one-token-per-step, deterministic, exact decoding writes the continuation, whatever
    the decoding settings of the sweep: one committed token per forward, every forward over the whole sequence (no
    approximate cache), no draw from the global RNG, and the continuation a plain loop decodes is greedy."""
    from trl_t3d.evaluation.lm_eval import model as lm_eval_model

    model, tokenizer, _ = toy
    lm = DiffusionLMEval(model=model, tokenizer=tokenizer, mc_num=4, mc_batch_size=4, **settings)
    context = lm.tok_encode("Question: 7+80?\nAnswer:")  # unseen: the toy is unsure, so the order matters
    expected = _naive_greedy(model, lm.adapter.mask_token_id, context, 8)
    outputs, lengths = [], []
    real = lm_eval_model.diffusion_generate

    def spy(*args, **kwargs):
        outputs.append(real(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(lm_eval_model, "diffusion_generate", spy)
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    rng = torch.get_rng_state()
    try:
        greedy = lm._is_greedy(context, expected)
        wrong = lm._is_greedy(context, expected[:-1] + [(expected[-1] + 1) % 50])
    finally:
        hook.remove()
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drawn from the global generator
    assert greedy and not wrong
    for out in outputs:
        assert out.nfe == 8 and sorted(out.step_map[0].tolist()) == list(range(8))  # one token per forward
    assert lengths == [len(context) + 8] * 16  # 8 exact full-sequence forwards per check


def test_do_sample_without_temperature_samples_at_a_stated_temperature(toy, monkeypatch, caplog):
    from trl_t3d import DiffusionGenerationConfig

    model, tokenizer, _ = toy
    lm = DiffusionLMEval(model=model, tokenizer=tokenizer, block_length=4)
    with caplog.at_level("WARNING", logger="trl_t3d.evaluation.lm_eval.model"):
        config, _ = lm._request_config({"do_sample": True, "max_gen_toks": 4})
    assert config.temperature == 1.0  # Hugging Face's default, not greedy
    assert "temperature=1.0" in caplog.text and "Pass the model argument temperature=" in caplog.text
    cases = [
        ({"do_sample": False, "temperature": 0.7}, 0.0),
        ({}, 0.0),
        ({"temperature": 0.5}, 0.5),
        ({"do_sample": True, "temperature": 0.3}, 0.3),
    ]
    for kwargs, temperature in cases:
        assert lm._request_config(kwargs)[0].temperature == temperature, kwargs
    # a greedy task's top_k / top_p would only reorder the commits (confidences under the filtered candidates):
    # ignored, as Hugging Face's greedy search ignores them; a sampled task's are used
    greedy, _ = lm._request_config({"do_sample": False, "top_p": 0.5, "top_k": 3})
    assert (greedy.temperature, greedy.top_p, greedy.top_k) == (0.0, None, None)
    sampled, _ = lm._request_config({"do_sample": True, "temperature": 0.5, "top_p": 0.5, "top_k": 3})
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.5, 0.5, 3)
    # the model's own sampling temperature when it has one
    monkeypatch.setattr(
        model, "diffusion_generation_config", DiffusionGenerationConfig(temperature=0.7), raising=False
    )
    assert lm._request_config({"do_sample": True})[0].temperature == 0.7


def test_generate_until_seeds_each_request(toy):
    """Sampled texts depend on the request and the seed only: not on the batch size, the process (rank), the order of
    the requests or what else is in the call; lm-eval's `repeats` copies of one request are different samples."""
    model, tokenizer, _ = toy
    kwargs = {"until": [], "do_sample": True, "temperature": 2.0, "max_gen_toks": 8}
    requests = [
        Instance("generate_until", {}, (f"Question: {a}+{b}?\nAnswer:", dict(kwargs)), 0, ("t", i, 1))
        for i, (a, b) in enumerate(PAIRS)
    ]
    alone = [DiffusionLMEval(model=model, tokenizer=tokenizer).generate_until([r])[0] for r in requests]
    batched = DiffusionLMEval(model=model, tokenizer=tokenizer, batch_size=4).generate_until(requests)
    other_rank = DiffusionLMEval(model=model, tokenizer=tokenizer, batch_size=3)
    other_rank._rank = 1  # the second process of a data-parallel run
    reversed_ = other_rank.generate_until(requests[::-1])[::-1]
    assert batched == alone and reversed_ == alone
    assert len(set(alone)) > 1  # sampled, and the prompts matter
    repeated = Instance("generate_until", {}, requests[6].args, 0, ("t", 6, 2))
    first, second = DiffusionLMEval(model=model, tokenizer=tokenizer).generate_until([repeated, repeated])
    assert first == alone[6] and second != first


def test_sweep_wall_time_is_wall_time_under_several_processes(toy, task_dir, monkeypatch):
    """Two processes decoding side by side take the time of one, not the sum: simulated by a second process that
    did the same work in the same time. `samples_per_s` is then the samples over that wall time."""
    model, tokenizer, _ = toy
    local: list[dict] = []

    def two_processes(self, obj, dst=0):
        local.extend(obj)
        return [obj, [{**r, "rank": 1} for r in obj]]

    monkeypatch.setattr(DiffusionLMEval, "gather_object", two_processes)
    (report,) = evaluate_lm_eval_tasks(model, tokenizer, TASK, [4], include_path=task_dir, batch_size=3, **SETTINGS)
    (result,) = report["results"]
    one_process = sum(r["seconds"] for r in local)  # this process's decoding time, measured per batch
    assert one_process > 0 and result["wall_time_s"] == pytest.approx(one_process, rel=1e-9)
    assert result["samples_per_s"] == pytest.approx(len(PAIRS) / one_process, rel=1e-9)
