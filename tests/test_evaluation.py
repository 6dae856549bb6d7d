"""Evaluation: verifiers, built-in tasks, AUP, plots/tables, evaluate_few_step and toy pretraining."""

import collections
import itertools
import json
import math
import os
import re

import pytest
import torch

from trl_t3d import testing
from trl_t3d.evaluation import (
    Task,
    aup,
    aup_of_report,
    boxed_verifier,
    evaluate_few_step,
    exact_match_verifier,
    extract_boxed,
    extract_last_number,
    get_verifier,
    markdown_table,
    normalize_latex_answer,
    number_verifier,
    one_of_verifier,
    permutation_verifier,
    plot_frontier,
    rows_markdown_table,
)
from trl_t3d.toy.tasks import (
    SKEWED_ORDERINGS,
    arithmetic_task,
    get_task,
    permutation_task,
    two_way_sort_task,
)


# ------------------------------------------------------------------------------------------------ verifiers
@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("The answer is 46", 46, True),
        ("so 12+34 = 46.", "46", True),
        ("#### 1,234", 1234, True),
        ("total: $1,234.00", "1234", True),
        ("first 3 then 5", 5, True),
        ("first 5 then 3", 5, False),
        ("-7 degrees", -7, True),
        ("0.5", "1/2", True),
        ("no number here", 3, False),
        ("46", "Natalia sold 48/2 = 24 clips ... #### 46", True),
        ("460", 46, False),
    ],
)
def test_number_verifier(completion, reference, expected):
    assert number_verifier(completion, reference) is expected


def test_number_verifier_rejects_reference_without_number():
    with pytest.raises(ValueError, match="exact_match_verifier"):
        number_verifier("5", "five")


def test_extract_helpers():
    assert extract_last_number("a 1,000,000 b 2.5") == "2.5"
    assert extract_last_number("ends with 7.") == "7"
    assert extract_boxed("x \\boxed{\\frac{1}{2}} and \\boxed{3}") == "3"
    assert extract_boxed("\\boxed{\\left(1, {2}\\right)}") == "\\left(1, {2}\\right)"
    assert extract_boxed("\\boxed 5$") == "5"
    assert extract_boxed("\\boxed{unfinished") is None
    assert extract_boxed("nothing") is None


@pytest.mark.parametrize(
    "predicted, reference",
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\frac12", "0.5"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("5\\text{ cm}", "5cm"),
        ("\\text{(B)}", "(B)"),
        ("90^\\circ", "90"),
        ("x = 3", "3"),
        ("1,000", "1000"),
        ("42.", "42"),
        ("\\$12", "12"),
        ("3\\sqrt{2}", "3 \\sqrt{2}"),
        ("\\{1,2\\}", "\\{1, 2\\}"),
    ],
)
def test_boxed_normalization_accepts_equivalent_spellings(predicted, reference):
    assert boxed_verifier(f"so the answer is $\\boxed{{{predicted}}}$.", reference), (
        normalize_latex_answer(predicted),
        normalize_latex_answer(reference),
    )


@pytest.mark.parametrize(
    "completion, reference",
    [
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}"),
        ("\\boxed{(1,3)}", "(1,2)"),
        ("the answer is 5", "5"),  # no box
        ("\\boxed{2\\sqrt{3}}", "3\\sqrt{2}"),
    ],
)
def test_boxed_verifier_rejects(completion, reference):
    assert not boxed_verifier(completion, reference)


def test_boxed_reference_given_as_solution():
    assert boxed_verifier("\\boxed{7}", "We find $x=\\boxed{7}$.")


def test_exact_one_of_permutation_verifiers():
    assert exact_match_verifier("  hello   world\n", "hello world")
    assert not exact_match_verifier("hello", "Hello")
    assert one_of_verifier(" b a ", ["a b", "b a"])
    assert not one_of_verifier("a a", ["a b", "b a"])
    assert one_of_verifier("abc", lambda s: sorted(s) == list("abc"))
    with pytest.raises(ValueError, match="collection"):
        one_of_verifier("a", "a")
    assert permutation_verifier("dcab", "abcd")
    assert not permutation_verifier("dcaa", "abcd")  # duplicate + missing
    assert not permutation_verifier("dca", "abcd")  # missing
    assert not permutation_verifier("dcabe", "abcd")  # extra
    assert get_verifier("boxed") is boxed_verifier
    with pytest.raises(ValueError, match="Unknown verifier"):
        get_verifier("nope")


# ------------------------------------------------------------------------------------------------ tasks
def test_arithmetic_task_is_valid_deterministic_and_split():
    task = arithmetic_task(200, split="test", seed=3)
    again = arithmetic_task(200, split="test", seed=3)
    assert task.prompts == again.prompts and task.references == again.references
    train = arithmetic_task(2000, split="train", seed=3)
    assert not set(task.prompts) & set(train.prompts)
    for prompt, reference, target in zip(task.prompts, task.references, task.targets):
        a, b = prompt[:-1].split("+")
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert int(a) + int(b) == reference and target == str(reference)
        assert task.verifier(target, reference)
        assert not task.verifier(str(reference + 1), reference)
        assert len(target) + 1 <= task.max_new_tokens
    assert any(len(str(r)) == 3 for r in train.references)  # carries into a new digit occur


def test_permutation_task_accepts_every_ordering_and_rejects_corruptions():
    task = permutation_task(100, split="test", seed=1)
    train = permutation_task(1000, split="train", seed=1)
    assert not set(task.prompts) & set(train.prompts)
    for i, (prompt, reference, target) in enumerate(zip(task.prompts, task.references, task.targets)):
        symbols = prompt.split(":", 1)[1]
        assert symbols == reference and 4 <= len(symbols) <= 5 and len(set(symbols)) == len(symbols)
        assert sorted(target) == sorted(symbols) and len(target) + 1 <= task.max_new_tokens
        assert task.verify(target, i)
        corrupted = target[0] * 2 + target[2:]  # a duplicate replaces a symbol
        assert not task.verify(corrupted, i)
    small = Task("p", ["perm:abcd"], ["abcd"], "permutation")
    assert all(small.verify("".join(p), 0) for p in itertools.permutations("abcd"))
    assert not small.verify("abcc", 0)
    # many valid answers: training targets of one prompt are not all the same ordering
    assert len({t for p, t in zip(train.prompts, train.targets)}) > 0.9 * len(train)


def _skewed_marginals(fixed: dict) -> dict:
    """Exact per-position distributions of the skewed orderings given the committed positions {pos: index}."""
    weights = {order: w for order, w in SKEWED_ORDERINGS if all(order[p] == v for p, v in fixed.items())}
    total = sum(weights.values())
    n = len(SKEWED_ORDERINGS[0][0])
    return {
        p: [sum(w for o, w in weights.items() if o[p] == v) / total for v in range(n)]
        for p in range(n)
        if p not in fixed
    }


def test_permutation_skewed_mode_is_found_one_position_at_a_time_but_not_in_one_step():
    task = get_task("permutation_skewed", num_examples=4000, split="train", seed=3)
    assert task.name == "permutation_skewed" and task.verifier is permutation_verifier
    orders = collections.Counter()
    for prompt, target in zip(task.prompts, task.targets):
        symbols = prompt.split(":", 1)[1]
        assert len(symbols) == 4 and permutation_verifier(target, symbols)
        orders[tuple(symbols.index(c) for c in target)] += 1
    total_weight = sum(w for _, w in SKEWED_ORDERINGS)
    assert set(orders) == {o for o, _ in SKEWED_ORDERINGS}
    for order, weight in SKEWED_ORDERINGS:  # drawn with the documented weights
        assert abs(orders[order] / len(task) - weight / total_weight) < 0.03
    mode = max(SKEWED_ORDERINGS, key=lambda ow: ow[1])[0]
    # one step: the per-position argmax (each by a clear margin) repeats a symbol
    marginals = _skewed_marginals({})
    one_step = [max(range(4), key=lambda v: m[v]) for m in marginals.values()]
    assert len(set(one_step)) < 4
    assert all(sorted(m)[-1] - sorted(m)[-2] >= 0.1 for m in marginals.values())
    # one position per step, most confident first (low-confidence remasking): the mode
    fixed = {}
    while len(fixed) < 4:
        marginals = _skewed_marginals(fixed)
        position = max(marginals, key=lambda p: max(marginals[p]))
        fixed[position] = max(range(4), key=lambda v: marginals[position][v])
    assert tuple(fixed[p] for p in range(4)) == mode


def test_two_way_sort_task_accepts_both_sorts_and_rejects_mixtures():
    task = two_way_sort_task(100, split="test", seed=1)
    assert get_task("two_way_sort", num_examples=100, split="test", seed=1).prompts == task.prompts
    train = two_way_sort_task(1000, split="train", seed=1)
    assert not set(task.prompts) & set(train.prompts)
    for i, (prompt, target) in enumerate(zip(task.prompts, task.targets)):
        symbols = prompt.split(":", 1)[1]
        ascending = "".join(sorted(symbols))
        assert 4 <= len(symbols) <= 5 and len(set(symbols)) == len(symbols)
        assert target in (ascending, ascending[::-1]) and len(target) + 1 <= task.max_new_tokens
        assert task.verify(ascending, i) and task.verify(ascending[::-1], i)
    small = two_way_sort_task(1, split="test", seed=0)
    small.prompts, small.references = ["sort:dacbe"], [("abcde", "edcba")]
    assert small.verify("abcde", 0) and small.verify("edcba", 0)
    assert not small.verify("abcba", 0)  # first half ascending, second half descending: a mixture
    assert not small.verify("edcde", 0) and not small.verify("badce", 0)  # mixture; a non-sorted permutation
    # the two modes are balanced in the training targets (seeded 50/50)
    share = sum(t == "".join(sorted(p.split(":", 1)[1])) for p, t in zip(train.prompts, train.targets)) / len(train)
    assert 0.45 < share < 0.55


def test_task_validation_and_prompt_rendering(tokenizer):
    with pytest.raises(ValueError, match="one reference per prompt"):
        Task("t", ["a", "b"], [1])
    with pytest.raises(ValueError, match="Unknown built-in task"):
        get_task("gsm9k")
    task = Task("t", ["1+2="], [3], "number", system_prompt="S", prompt_suffix="?")
    assert task.messages(0) == [{"role": "system", "content": "S"}, {"role": "user", "content": "1+2=?"}]
    # TRL's rule, as in collection and training: plain strings as they are, the chat template on request
    assert task.prompt_ids(tokenizer)[0] == tokenizer("S1+2=?")["input_ids"]
    assert task.prompt_ids(tokenizer, apply_chat_template=False)[0] == tokenizer("S1+2=?")["input_ids"]
    ids = task.prompt_ids(tokenizer, apply_chat_template=True)
    expected = tokenizer.apply_chat_template(task.messages(0), add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if not isinstance(expected, list) else expected
    assert ids[0] == list(expected)
    assert tokenizer.decode(ids[0]) == "<|system|>S<|user|>1+2=?<|assistant|>"
    conversation = Task("t", [[{"role": "user", "content": "1+2="}]], [3], "number")
    assert tokenizer.decode(conversation.prompt_ids(tokenizer)[0]) == "<|user|>1+2=<|assistant|>"


def test_task_from_dataset():
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["q1", "q2"], "answer": ["#### 4", "#### 5"]})
    task = Task.from_dataset(ds, "question", "answer", "number", name="mini")
    assert task.prompts == ["q1", "q2"] and task.verify("it is 5", 1) and not task.verify("it is 4", 1)
    with pytest.raises(ValueError, match="prompt_column"):
        Task.from_dataset(ds, "prompt", "answer", "number")


# ------------------------------------------------------------------------------------------------ AUP / reports
def test_aup_hand_computed():
    # points (TPF, acc%): (1, 80), (2, 78), (4, 70), (8, 60); y_min = 75 keeps the first two; y_max = 80.
    # AUP = 1*80 + 0.5*(2-1)*(78*exp(-3*(1-78/80)) + 80*1)
    expected = 80 + 0.5 * (78 * math.exp(-3 * (2 / 80)) + 80)
    assert aup([1, 2, 4, 8], [80, 78, 70, 60]) == pytest.approx(expected)
    assert aup([8, 1, 4, 2], [60, 80, 70, 78]) == pytest.approx(expected)  # order does not matter
    # a shared y_max above the curve weights every later point (not the first term)
    w = lambda y: math.exp(-3 * (1 - y / 90))  # noqa: E731
    assert aup([1, 2], [80, 78], y_max=90) == pytest.approx(80 + 0.5 * (78 * w(78) + 80 * w(80)))
    # no degradation: rectangle + area under the flat curve
    assert aup([1, 2, 4], [50, 50, 50]) == pytest.approx(50 + 50 + 100)
    with pytest.raises(ValueError, match="percent"):
        aup([1, 2], [80, 120])
    with pytest.raises(ValueError, match="positive"):
        aup([0, 2], [80, 70])


def _fake_report(name, task, accs):
    return {
        "model_name": name,
        "task": task,
        "results": [
            {"tokens_per_step": k, "accuracy": a, "nfe": 8 / k, "tokens_per_forward": float(k)}
            for k, a in zip([1, 2, 4, 8], accs)
        ],
    }


def test_plot_and_tables(tmp_path):
    reports = {
        "teacher": [
            _fake_report("teacher", "arithmetic", [0.9, 0.8, 0.5, 0.2]),
            _fake_report("teacher", "perm", [1, 0.7, 0.2, 0]),
        ],
        "student": [
            _fake_report("student", "arithmetic", [0.9, 0.9, 0.85, 0.6]),
            _fake_report("student", "perm", [1, 1, 0.9, 0.5]),
        ],
    }
    path = plot_frontier(reports, str(tmp_path / "frontier.png"))
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = markdown_table(reports)
    assert (
        table.count("\n") == 5 and "| student | perm | 100.0 (8.0) | 100.0 (4.0) | 90.0 (2.0) | 50.0 (1.0) |" in table
    )
    assert aup_of_report(reports["student"][1]) == pytest.approx(aup([1, 2, 4, 8], [100, 100, 90, 50]))
    rows = [
        {
            "task": "perm",
            "method": "t3d",
            "tokens_per_step": k,
            "accuracy_mean": 0.5,
            "accuracy_std": 0.1,
            "seeds": [0],
        }
        for k in (1, 4)
    ]
    assert "| perm | t3d | 50.0 ± 10.0 | 50.0 ± 10.0 |" in rows_markdown_table(rows)


# ------------------------------------------------------------------------------------------------ evaluate_few_step
@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return testing.make_generic_mlm(tokenizer, hidden_size=32, num_layers=2, seed=0)


def test_evaluate_few_step_reports_nfe_consistent_with_tokens_per_step(tiny_model, tokenizer, tmp_path):
    task = arithmetic_task(6, seed=0)
    settings = dict(generation_config={"max_new_tokens": 8, "block_length": 8, "stop_at_eos": False}, batch_size=4)
    report = evaluate_few_step(
        tiny_model,
        tokenizer,
        task,
        [1, 2, 4, 8],
        **settings,
        output_dir=str(tmp_path),
        model_name="tiny",
        show_progress=False,
        num_samples_logged=6,
    )
    assert [r["tokens_per_step"] for r in report["results"]] == [1, 2, 4, 8]
    plain = {
        k: [testing.plain_loop_completion(tiny_model, tokenizer, p, 8, k)[0] for p in task.prompts]
        for k in (1, 2, 4, 8)
    }
    for r in report["results"]:
        k = r["tokens_per_step"]
        assert r["nfe"] == 8 / k and r["nfe_per_batch"] == 8 / k  # no EOS stop: every sample pays ceil(8 / k)
        assert r["tokens_per_forward"] == k
        assert r["wall_time_s"] > 0 and r["samples_per_s"] > 0
        # the texts of left-padded batches are those of a plain unpadded loop, and the accuracy is theirs, scored
        # here by "the last integer is the sum"
        assert [s["completion"] for s in r["samples"]] == plain[k]
        right = [bool(re.findall(r"-?\d+", c)) and int(re.findall(r"-?\d+", c)[-1]) == a for c, a in
                 zip(plain[k], task.references)]  # fmt: skip
        assert r["accuracy"] == sum(right) / 6 and r["num_correct"] == sum(right)
    # an accuracy strictly between 0 and 1: the even prompts' references are the one-token-per-step texts
    echo = Task("echo", task.prompts, [c if i % 2 == 0 else "-" for i, c in enumerate(plain[1])], verifier="exact")
    results = evaluate_few_step(tiny_model, tokenizer, echo, [1, 2, 4, 8], **settings, show_progress=False)["results"]
    expected = [sum(plain[k][i] == plain[1][i] for i in (0, 2, 4)) / 6 for k in (1, 2, 4, 8)]
    assert [r["accuracy"] for r in results] == expected and expected[0] == 0.5
    saved = json.loads((tmp_path / "few_step_eval.json").read_text())
    assert saved["model_name"] == "tiny" and saved["num_examples"] == 6 and len(saved["results"]) == 4
    assert (tmp_path / "few_step_eval.png").exists()


def test_nfe_counts_every_forward_a_sample_ran_before_its_eos(tiny_model, tokenizer):
    """A sample that stops at EOS pays the forwards it ran, including those that committed only positions after the
    EOS (they become padding with step -1): its NFE is that of the plain loop decoding it alone."""
    task = arithmetic_task(6, seed=0)
    eos = tokenizer.convert_tokens_to_ids("z")  # the untrained toy writes "z" often: call it EOS
    config = {"max_new_tokens": 8, "block_length": 8, "eos_token_id": eos}
    report = evaluate_few_step(
        tiny_model, tokenizer, task, [1, 2], generation_config=config, batch_size=4, show_progress=False,
        num_samples_logged=6,
    )  # fmt: skip
    for r in report["results"]:
        plain = [
            testing.plain_loop_completion(tiny_model, tokenizer, p, 8, r["tokens_per_step"], eos=eos)
            for p in task.prompts
        ]
        assert [s["completion"] for s in r["samples"]] == [text for text, _ in plain]
        assert r["nfe"] == sum(forwards for _, forwards in plain) / 6
    assert report["results"][0]["nfe"] < 8  # the EOS stop saved forwards


def test_evaluate_few_step_scores_with_the_verifier(tiny_model, tokenizer):
    """Accuracy is the verifier's verdict on the decoded text: a verifier accepting anything gives 1.0."""
    task = Task("any", ["1+1=", "2+2=", "3+3="], [None] * 3, verifier=lambda c, r: True, max_new_tokens=4)
    report = evaluate_few_step(tiny_model, tokenizer, task, [1, 4], block_length=4, show_progress=False)
    assert [r["accuracy"] for r in report["results"]] == [1.0, 1.0]
    task = Task("none", ["1+1="], [None], verifier=lambda c, r: False, max_new_tokens=4)
    report = evaluate_few_step(tiny_model, tokenizer, task, [2], block_length=4, show_progress=False)
    assert report["results"][0]["accuracy"] == 0.0
    # with EOS stop, per-sample NFE never exceeds the full budget
    assert report["results"][0]["nfe"] <= 2


def test_evaluate_few_step_errors(tiny_model, tokenizer):
    task = arithmetic_task(2)
    with pytest.raises(ValueError, match="block_length"):
        evaluate_few_step(tiny_model, tokenizer, task, [8], block_length=4, show_progress=False)
    with pytest.raises(ValueError, match="Task"):
        evaluate_few_step(tiny_model, tokenizer, ["1+1="], [1], show_progress=False)
    with pytest.raises(ValueError, match="positive"):
        evaluate_few_step(tiny_model, tokenizer, task, [0], show_progress=False)


# ------------------------------------------------------------------------------------------------ pretraining
def test_masked_diffusion_pretraining_learns(tokenizer):
    """A few steps on one fixed example drive its loss down: objective, masking and optimizer are wired right."""
    from trl_t3d.toy.pretraining import build_examples, masked_diffusion_loss, pretrain_masked_diffusion

    task = Task("one", ["12+34="], [46], "number", targets=["46"], max_new_tokens=4)
    examples = build_examples([task], tokenizer)
    eos = tokenizer.eos_token_id
    assert examples[0][1] == tokenizer("46")["input_ids"] + [eos, eos]
    model = testing.make_generic_mlm(tokenizer, hidden_size=32, num_layers=2, seed=1)
    log = pretrain_masked_diffusion(
        model, tokenizer, [task], 60, batch_size=8, learning_rate=1e-2, warmup_steps=5, show_progress=False
    )
    assert log["steps"] == 60 and not model.training
    assert sum(log["losses"][-10:]) / 10 < 0.25 * sum(log["losses"][:10]) / 10
    out = evaluate_few_step(model, tokenizer, task, [1], block_length=4, show_progress=False)
    assert out["results"][0]["accuracy"] == 1.0
    # the loss only covers masked completion tokens: nothing masked -> zero loss
    from trl_t3d.adapters import get_adapter
    from trl_t3d.toy.pretraining import collate

    adapter = get_adapter(model, tokenizer=tokenizer)
    prompt_ids, prompt_mask, completions = collate(examples, adapter.pad_token_id)
    generator = torch.Generator().manual_seed(0)
    loss = masked_diffusion_loss(model, adapter, prompt_ids, prompt_mask, completions, generator)
    assert loss.item() >= 0


def test_build_examples_drops_and_counts_too_long(tokenizer, caplog):
    from trl_t3d.toy.pretraining import build_examples

    task = Task("t", ["a", "b"], [1, 2], "exact", targets=["12", "123456"], max_new_tokens=4)
    with caplog.at_level("WARNING"):
        examples = build_examples([task], tokenizer)
    assert len(examples) == 1 and "Dropped 1" in caplog.text
    with pytest.raises(ValueError, match="targets"):
        build_examples([Task("t", ["a"], [1], "exact", max_new_tokens=4)], tokenizer)


def test_permutation_skewed_rejects_other_lengths():
    with pytest.raises(ValueError, match="exactly 4 symbols"):
        permutation_task(8, orderings="skewed", max_length=5)
    with pytest.raises(ValueError, match="'uniform' or 'skewed'"):
        permutation_task(8, orderings="sorted")
    assert {len(p.split(":")[1]) for p in permutation_task(50, seed=2).prompts} == {4, 5}  # uniform default 4..5
    with pytest.raises(ValueError, match="min_length"):
        permutation_task(8, min_length=0)  # an explicit bad length is an error, not the default


def test_phrase_task_argmax_mixes_phrases_while_one_position_at_a_time_finds_one():
    """The "New York" + "Los Angeles" -> "New Angeles" failure, on the exact phrase distribution of every category."""
    from trl_t3d.toy.tasks import PHRASE_WEIGHTS, phrase_bank, phrase_task

    bank = phrase_bank(32, 8)
    for phrases in bank:

        def marginal(position, fixed, phrases=phrases):
            alive = [(p, w) for p, w in zip(phrases, PHRASE_WEIGHTS) if all(p[i] == c for i, c in fixed.items())]
            total = sum(w for _, w in alive)
            counts = collections.Counter()
            for p, w in alive:
                counts[p[position]] += w / total
            return counts

        one_step = "".join(marginal(i, {}).most_common(1)[0][0] for i in range(8))
        assert one_step not in phrases  # per-position argmax: A's letters and B/C's shared ones
        fixed = {}
        while len(fixed) < 8:  # low-confidence remasking: the most confident open position first
            open_positions = [i for i in range(8) if i not in fixed]
            position = max(open_positions, key=lambda i: marginal(i, fixed).most_common(1)[0][1])
            fixed[position] = marginal(position, fixed).most_common(1)[0][0]
        assert "".join(fixed[i] for i in range(8)) == phrases[1]  # B: valid, and learnable as a rule
    test, train = phrase_task(200, split="test"), phrase_task(2000, split="train")
    assert not set(test.prompts) & set(train.prompts)
    share_a = sum(t == bank[int(p[4:6])][0] for p, t in zip(train.prompts, train.targets)) / len(train)
    assert abs(share_a - PHRASE_WEIGHTS[0]) < 0.04
    assert test.verify(bank[int(test.prompts[0][4:6])][2], 0) and not test.verify(
        bank[int(test.prompts[0][4:6])][2][::-1], 0
    )


def test_reverse_task_is_deterministic_over_several_blocks():
    task = get_task("reverse", num_examples=200, split="test", seed=2)
    lengths = {len(t) for t in task.targets}
    assert min(lengths) == 4 and max(lengths) == 10 and task.max_new_tokens == 16 and task.block_length == 4
    for i, (prompt, target) in enumerate(zip(task.prompts, task.targets)):
        assert target == prompt.split(":", 1)[1][::-1] and task.verify(f" {target} ", i)
        assert not task.verify(target[:-1], i)
