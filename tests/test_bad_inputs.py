"""A sweep of every public entry point with wrong inputs: each one must fail with an error that names the fix (or be
a documented, counted change). Python API, the `trl-t3d` CLI, an example script, recipes and the demo."""

import json

import pytest
import torch
from datasets import Dataset

from trl_t3d import (
    AutoModelForDiffusionLM,
    DDOConfig,
    DDOTrainer,
    DiffusionGenerationConfig,
    add_diffusion_generation,
    cli,
    collect_trajectories,
    testing,
)
from trl_t3d.evaluation import Task, evaluate_few_step
from trl_t3d.hub import push_student_to_hub
from trl_t3d.toy.tasks import get_task

ROW = {"prompt_ids": [11, 12, 13], "completion_ids": [14, 15, 16, 17], "step_map": [1, 0, 3, 2], "block_length": 4}


def ddo_config(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "out"), max_steps=1, report_to="none", use_cpu=True, disable_tqdm=True)
    return DDOConfig(**{**defaults, **kw})


def trainer(tmp_path, dataset=None, model=None, tokenizer=None, config=None, **kw):
    tokenizer = tokenizer or testing.make_tokenizer()
    return DDOTrainer(
        model or testing.make_generic_mlm(tokenizer),
        args=config or ddo_config(tmp_path),
        train_dataset=Dataset.from_list([ROW] * 2) if dataset is None else dataset,
        processing_class=tokenizer,
        **kw,
    )


def rows(**changes):
    return Dataset.from_list([{**ROW, **changes}] * 2)


def tokenizer_without_mask():
    """The test tokenizer's characters with no mask token at all (not even one findable by name)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<|pad|>", "<|eos|>", "<|blank|>", "<|bos|>", *testing.CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|pad|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|eos|>")


def model_without_mask_id(tokenizer):
    model = testing.make_generic_mlm(tokenizer)
    model.config.mask_token_id = None
    return model


def gen(**kw):
    return DiffusionGenerationConfig(**{"max_new_tokens": 8, "block_length": 4, **kw})


def prompts(n=2, column="prompt"):
    return Dataset.from_dict({column: ["1+1="] * n})


# (id, call(tmp_path, paths), exception type, regex the message must match: the problem and the fix)
PYTHON_API = [
    # DDOConfig: sizes and the teacher's decoding settings, checked when the config is built
    ("config-beta-zero", lambda t, p: ddo_config(t, beta=0), ValueError, r"beta > 0"),
    ("config-mask-ratio", lambda t, p: ddo_config(t, mask_ratios=[0.0]), ValueError, r"mask_ratios.*\(0, 1\]"),
    ("config-random-ratio", lambda t, p: ddo_config(t, random_token_ratio=2), ValueError, r"\[0, 1\]"),
    ("config-completion-0", lambda t, p: ddo_config(t, max_completion_length=0), ValueError, r"max_completion_length` must be >= 1"),
    ("config-prompt-neg", lambda t, p: ddo_config(t, max_prompt_length=-1), ValueError, r"max_prompt_length` must be >= 1"),
    ("config-gen-batch-0", lambda t, p: ddo_config(t, generation_batch_size=0), ValueError, r"generation_batch_size` must be >= 1"),
    ("config-student-tps-0", lambda t, p: ddo_config(t, student_tokens_per_step=0), ValueError, r"student_tokens_per_step` must be >= 1"),
    ("config-mask-id-neg", lambda t, p: ddo_config(t, mask_token_id=-5), ValueError, r"mask_token_id` must be a token id"),
    ("config-teacher-tps>block", lambda t, p: ddo_config(t, generation_tokens_per_step=8), ValueError,
     r"teacher decoding settings.*`tokens_per_step`=8 is larger than `block_length`=4"),
    ("config-teacher-tps-0", lambda t, p: ddo_config(t, generation_tokens_per_step=0), ValueError, r"tokens_per_step` must be a positive int"),
    ("config-teacher-length", lambda t, p: ddo_config(t, generation_max_new_tokens=6), ValueError,
     r"`block_length`=4 does not divide `max_new_tokens`=6.*multiple of 4"),
    ("config-teacher-remasking", lambda t, p: ddo_config(t, generation_remasking="nope"), ValueError, r"remasking.*unknown.*Choose one of"),
    ("config-teacher-temperature", lambda t, p: ddo_config(t, generation_temperature=-1.0), ValueError, r"temperature` must be >= 0"),
    ("config-unknown-preset", lambda t, p: ddo_config(t, preset="paper"), ValueError, r"preset='paper'.*recommended.*t3d_paper"),
    ("config-recollect-no-rounds", lambda t, p: ddo_config(t, recollect_each_round=True), ValueError, r"ref_sync_steps > 0"),
    # DDOTrainer: data and model
    ("trainer-no-dataset", lambda t, p: DDOTrainer(testing.make_generic_mlm(), args=ddo_config(t)), ValueError, r"train_dataset` is required"),
    ("trainer-list-dataset", lambda t, p: trainer(t, dataset=[ROW]), TypeError, r"must be a `datasets.Dataset`, got list"),
    ("trainer-wrong-columns", lambda t, p: trainer(t, dataset=Dataset.from_dict({"question": ["1+1"]})), ValueError,
     r"no `step_map` column \(columns: \['question'\]\).*`prompt`, `messages` or `prompt_ids`.*rename_column"),
    ("trainer-lost-step-map", lambda t, p: trainer(t, dataset=rows().add_column("prompt", ["a", "b"]).remove_columns("step_map")),
     ValueError, r"no `step_map`.*remove_columns"),
    ("trainer-empty", lambda t, p: trainer(t, dataset=rows().select([])), ValueError, r"empty \(0 rows"),
    ("trainer-block-straddles", lambda t, p: trainer(t, config=ddo_config(t, block_length=6)), ValueError,
     r"`block_length`=6 \(training\) is not a multiple of the decoding block length of 2 train trajectories \(decoded with blocks of \[4\]\).*multiple of 4"),
    ("trainer-step-map-string", lambda t, p: trainer(t, dataset=rows(step_map="1032")), ValueError, r"list of ints, got the string '1032'"),
    ("trainer-step-map-length", lambda t, p: trainer(t, dataset=rows(step_map=[0, 1, 2])), ValueError,
     r"`step_map` has 3 entries but the completion has 4 tokens.*keep the decoder's token ids"),
    ("trainer-step-map-negative", lambda t, p: trainer(t, dataset=rows(step_map=[0, 1, -1, 2])), ValueError, r"negative steps.*cut"),
    ("trainer-step-map-blocks", lambda t, p: trainer(t, dataset=rows(block_length=2, step_map=[3, 2, 1, 0])), ValueError,
     r"out of range for block_length=2.*check `block_length`"),
    ("trainer-block-length-0", lambda t, p: trainer(t, dataset=rows(block_length=0)), ValueError, r"no valid `block_length`"),
    ("trainer-mask-in-completion", lambda t, p: trainer(t, dataset=rows(completion_ids=[14, 2, 16, 17])), ValueError,
     r"mask token 2 occurs inside `completion_ids`"),
    ("trainer-unknown-adapter", lambda t, p: trainer(t, config=ddo_config(t, adapter="nope")), ValueError, r"Unknown adapter 'nope'.*'generic'"),
    ("trainer-no-mask-token", lambda t, p: trainer(t, tokenizer=(tk := tokenizer_without_mask()), model=model_without_mask_id(tk)),
     ValueError, r"mask.*add_special_tokens\(\{'mask_token'"),
    ("trainer-pad-is-mask", lambda t, p: trainer(t, tokenizer=_pad_as_mask()), ValueError, r"pad_token_id == mask_token_id"),
    ("trainer-lora-targets", lambda t, p: trainer(t, peft_config=_lora(["nope"])), ValueError,
     r"None of the LoRA target_modules \['nope'\].*leave `target_modules` unset"),
    ("trainer-same-ref", lambda t, p: trainer(t, model=(m := testing.make_generic_mlm()), ref_model=m), ValueError, r"different objects"),
    # Collection, decoding, evaluation, loading, hub
    ("collect-prompt-column", lambda t, p: collect_trajectories(testing.make_generic_mlm(), testing.make_tokenizer(), prompts(column="q"), gen()),
     ValueError, r"no prompt column.*found \['q'\].*prompt_column"),
    ("collect-batch-0", lambda t, p: collect_trajectories(testing.make_generic_mlm(), testing.make_tokenizer(), prompts(), gen(), batch_size=0),
     ValueError, r"batch_size` and `shard_size` must be >= 1"),
    ("collect-empty", lambda t, p: collect_trajectories(testing.make_generic_mlm(), testing.make_tokenizer(), prompts(0), gen()),
     ValueError, r"empty"),
    ("collect-not-dataset", lambda t, p: collect_trajectories(testing.make_generic_mlm(), testing.make_tokenizer(), ["1+1"], gen()),
     TypeError, r"must be a `datasets.Dataset`"),
    ("generation-tps>block", lambda t, p: gen(tokens_per_step=8), ValueError, r"tokens_per_step <= 4 or a longer block"),
    ("generation-block-divides", lambda t, p: gen(block_length=3), ValueError, r"does not divide.*multiple of 3"),
    ("generation-steps-and-tps", lambda t, p: gen(steps=4, tokens_per_step=2), ValueError, r"Set one of them"),
    ("generation-threshold-random", lambda t, p: gen(threshold=0.9, remasking="random"), ValueError, r"drop the threshold"),
    ("generation-top-p", lambda t, p: gen(top_p=0.0), ValueError, r"top_p` must be in \(0, 1\]"),
    ("eval-task-type", lambda t, p: evaluate_few_step(testing.make_generic_mlm(), testing.make_tokenizer(), "arithmetic"),
     ValueError, r"Build one with Task"),
    ("eval-tps>block", lambda t, p: evaluate_few_step(testing.make_generic_mlm(), testing.make_tokenizer(), get_task("arithmetic", num_examples=2), [16]),
     ValueError, r"Use a block_length >= 16"),
    ("eval-tps-0", lambda t, p: evaluate_few_step(testing.make_generic_mlm(), testing.make_tokenizer(), get_task("arithmetic", num_examples=2), [0]),
     ValueError, r"positive ints"),
    ("task-unknown", lambda t, p: get_task("gsm9k"), ValueError, r"Unknown built-in task 'gsm9k'.*Task\.from_dataset"),
    ("task-size-0", lambda t, p: get_task("arithmetic", num_examples=0), ValueError, r"num_examples` must be positive"),
    ("task-column", lambda t, p: Task.from_dataset(Dataset.from_dict({"q": ["a"], "a": ["1"]}), prompt_column="prompt", answer_column="a", verifier="number"),
     ValueError, r"No column 'prompt'.*prompt_column"),
    ("task-verifier", lambda t, p: Task.from_dataset(prompts(1).add_column("a", ["2"]), prompt_column="prompt", answer_column="a", verifier="nope"),
     ValueError, r"Unknown verifier 'nope'.*callable"),
    ("load-unknown-adapter", lambda t, p: AutoModelForDiffusionLM.from_pretrained(p["generic"], adapter="nope"), ValueError, r"Unknown adapter 'nope'"),
    ("mixin-unknown-adapter", lambda t, p: add_diffusion_generation(testing.make_generic_mlm(), adapter="nope"), ValueError, r"Unknown adapter 'nope'"),
    ("push-incomplete-folder", lambda t, p: push_student_to_hub(str(t), "me/student"), ValueError,
     r"not a complete student: missing.*trainer.save_model"),
]  # fmt: skip


def _pad_as_mask():
    tokenizer = testing.make_tokenizer()
    tokenizer.pad_token = tokenizer.mask_token
    return tokenizer


def _lora(targets):
    from peft import LoraConfig

    return LoraConfig(r=2, target_modules=targets)


@pytest.fixture(scope="module")
def paths(tmp_path_factory, generic_dir):
    folder = tmp_path_factory.mktemp("bad_inputs")
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": "2"}) + "\n" for q in ("1+1=", "0+2=")))
    from datasets import DatasetDict

    DatasetDict({"train": prompts()}).save_to_disk(str(folder / "saved"))
    return {"generic": generic_dir, "data": str(data), "saved": str(folder / "saved"), "folder": folder}


@pytest.mark.parametrize("call, error, match", [case[1:] for case in PYTHON_API], ids=[c[0] for c in PYTHON_API])
def test_python_api_bad_input(call, error, match, tmp_path, paths):
    with pytest.raises(error, match=match):
        call(tmp_path, paths)


def _cli(*argv):
    return lambda t, p: cli.main([a.format(**p, tmp=t) for a in argv])


CLI = [
    ("collect-no-output", _cli("collect", "--model_name_or_path", "{generic}", "--dataset_name", "{data}"), ValueError,
     r"`--output_dir` is required"),
    ("collect-no-model", _cli("collect", "--dataset_name", "{data}", "--output_dir", "{tmp}/o"), ValueError,
     r"`--model_name_or_path` is required"),
    ("collect-missing-file", _cli("collect", "--model_name_or_path", "{generic}", "--dataset_name", "{tmp}/nope.jsonl",
     "--output_dir", "{tmp}/o"), FileNotFoundError, r"No such data file or directory: .*nope.jsonl"),
    ("collect-split", _cli("collect", "--model_name_or_path", "{generic}", "--dataset_name", "{saved}", "--dataset_split",
     "test", "--output_dir", "{tmp}/o"), ValueError, r"Split 'test' not in.*splits: \['train'\]"),
    ("collect-max-samples-0", _cli("collect", "--model_name_or_path", "{generic}", "--dataset_name", "{data}",
     "--max_samples", "0", "--output_dir", "{tmp}/o"), ValueError, r"--max_samples` must be >= 1"),
    ("collect-prompt-column", _cli("collect", "--model_name_or_path", "{generic}", "--dataset_name", "{data}",
     "--prompt_column", "question", "--output_dir", "{tmp}/o"), ValueError, r"no prompt column.*--prompt_column"),
    ("collect-tps-0", _cli("collect", "--model_name_or_path", "{generic}", "--dataset_name", "{data}", "--tokens_per_step",
     "0", "--output_dir", "{tmp}/o"), ValueError, r"tokens_per_step` must be a positive int"),
    ("collect-tps>block", _cli("collect", "--model_name_or_path", "{generic}", "--dataset_name", "{data}",
     "--tokens_per_step", "8", "--output_dir", "{tmp}/o"), ValueError, r"Use tokens_per_step <= 4 or a longer block"),
    ("collect-unknown-flag", _cli("collect", "--model_name_or_path", "{generic}", "--tokens_per_stepp", "2"),
     (SystemExit, ValueError), None),  # argparse / HfArgumentParser name the flag
    ("distill-4bit-no-peft", _cli("distill", "--model_name_or_path", "{generic}", "--dataset_name", "{data}", "--output_dir",
     "{tmp}/o", "--load_in_4bit", "--bf16", "false", "--use_cpu", "true"), ValueError, r"add `--use_peft`"),
    ("distill-teacher-tps", _cli("distill", "--model_name_or_path", "{generic}", "--dataset_name", "{data}", "--output_dir",
     "{tmp}/o", "--generation_tokens_per_step", "8", "--bf16", "false"), ValueError, r"teacher decoding settings"),
    ("eval-task-and-data", _cli("eval", "--model_name_or_path", "{generic}", "--task", "arithmetic", "--dataset_name",
     "{data}"), ValueError, r"either `--task`.*or `--dataset_name`"),
    ("eval-tps-0", _cli("eval", "--model_name_or_path", "{generic}", "--task", "arithmetic", "--tokens_per_step", "0"),
     ValueError, r"--tokens_per_step` must be positive"),
    ("eval-length", _cli("eval", "--model_name_or_path", "{generic}", "--task", "arithmetic", "--block_length", "4",
     "--tokens_per_step", "1", "--max_new_tokens", "6"), ValueError, r"not a multiple of the block length 4.*--max_new_tokens 8"),
    ("eval-unknown-task", _cli("eval", "--model_name_or_path", "{generic}", "--task", "gsm9k"), ValueError,
     r"Unknown built-in task"),
    ("eval-answer-column", _cli("eval", "--model_name_or_path", "{generic}", "--dataset_name", "{data}", "--answer_column",
     "solution"), ValueError, r"No answer column 'solution'.*--answer_column"),
]  # fmt: skip


@pytest.mark.parametrize("call, error, match", [case[1:] for case in CLI], ids=[c[0] for c in CLI])
def test_cli_bad_input(call, error, match, tmp_path, paths, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default output_dir ("eval") would land
    with pytest.raises(error, match=match):
        call(tmp_path, paths)
    assert not (tmp_path / "o").exists() and not (tmp_path / "eval").exists()  # nothing written before the error


def test_recipe_with_an_unknown_key_is_an_error(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: m\nlearning_rte: 1.0e-5\n")
    with pytest.raises(
        ValueError, match=r"Unknown key\(s\) in the recipe .*`learning_rte` \(did you mean `learning_rate`\?\)"
    ):
        cli.parse_args("distill", ["--config", str(recipe), "--bf16", "false"])


def test_example_script_bad_input(tmp_path, paths):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ex", Path(__file__).parents[1] / "examples" / "distill_dream.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with pytest.raises(ValueError, match=r"`block_length` must be >= 1"):
        example.parse_args(["--block_length", "0", "--output_dir", str(tmp_path), "--bf16", "false"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--teacher_steps", "0"], "--teacher_steps must be >= 1"),
        (["--eval_examples", "-3"], "--eval_examples must be >= 1"),
        (["--tokens_per_step", "1", "0"], "--tokens_per_step must be >= 1"),
    ],
)
def test_demo_bad_input(argv, message, capsys):
    from trl_t3d.toy.demo import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_what_is_changed_is_counted_not_silent(tmp_path, caplog):
    """Cutting a long prompt and dropping a long completion are documented changes: counted and logged."""
    long_prompt = {**ROW, "prompt_ids": list(range(10, 30))}
    long_completion = {**ROW, "completion_ids": [14] * 8, "step_map": [0, 1, 2, 3, 4, 5, 6, 7]}
    dataset = Dataset.from_list([ROW, long_prompt, long_completion])
    config = ddo_config(tmp_path, max_prompt_length=8, max_completion_length=4)
    with caplog.at_level("WARNING"):
        result = trainer(tmp_path, dataset=dataset, config=config)
    stats = result._dataset_stats["train"]
    assert (stats["num_kept"], stats["num_truncated_prompts"], stats["num_dropped_long_completions"]) == (2, 1, 1)
    assert "1 of 3 prompts were longer than max_prompt_length=8" in caplog.text
    assert "1 of 3 examples were dropped: completion longer than max_completion_length=4" in caplog.text


def test_tokens_per_step_not_dividing_the_block_is_a_documented_schedule():
    """Not an error: LLaDA's schedule gives the remainder to the block's last step (3 + 1 for a block of 4), and the
    warning states that schedule (issue 20.9)."""
    from trl_t3d.generation import diffusion_generate

    with pytest.warns(UserWarning, match=r"2 steps committing \[3, 1\] tokens"):
        config = gen(tokens_per_step=3, stop_at_eos=False, output_step_map=True, return_dict_in_generate=True)
    assert config.block_schedule() == [3, 1]
    out = diffusion_generate(testing.make_generic_mlm(), torch.tensor([[11, 12, 13]]), generation_config=config)
    assert out.step_map[0].tolist().count(0) == 3 and out.nfe == 4  # per block of 4: 3 tokens, then 1


def test_tokenizer_larger_than_the_embedding_is_named_up_front():
    """Issue 20.12: a tokenizer with ids the model has no embedding row for failed deep in decoding (IndexError)."""
    from trl_t3d import DiffusionLM

    tokenizer = testing.make_tokenizer()
    model = testing.make_generic_mlm(tokenizer)
    model.resize_token_embeddings(len(tokenizer) - 8)
    with pytest.raises(ValueError, match=rf"tokenizer has {len(tokenizer)} tokens.*only {len(tokenizer) - 8} rows"):
        DiffusionLM.from_model(model, tokenizer)


def test_tokens_per_step_that_does_not_divide_the_block_states_the_schedule():
    """Issue 20.9: `tokens_per_step` 3 in a block of 8 decoded [3, 3, 2] without a word."""
    from trl_t3d.generation import DiffusionGenerationConfig

    with pytest.warns(
        UserWarning, match=r"`tokens_per_step`=3 does not divide `block_length`=8: .*3 steps committing \[3, 3, 2\]"
    ):
        DiffusionGenerationConfig(max_new_tokens=8, block_length=8, tokens_per_step=3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DiffusionGenerationConfig(max_new_tokens=8, block_length=8, tokens_per_step=4)  # divides: no warning


@pytest.mark.parametrize(
    "make, key", [(testing.make_llada, "max_sequence_length"), (testing.make_generic_mlm, "max_position_embeddings")]
)
def test_prompt_plus_completion_beyond_the_context_says_by_how_much(make, key, caplog):
    """Issue 20.9: a prompt longer than a 256-position LLaDA decoded silently."""
    from trl_t3d.generation import diffusion_generate

    tokenizer = testing.make_tokenizer()
    model = make(tokenizer)
    setattr(model.config, key, 16)
    prompt = torch.tensor([tokenizer("1+1=2, 2+2=4, 3+")["input_ids"][:12]])
    with caplog.at_level("WARNING"):
        diffusion_generate(model, prompt, max_new_tokens=8, block_length=4, processing_class=tokenizer)
    assert f"take 20 positions, 4 more than the model's context of 16 (`config.{key}`)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        diffusion_generate(model, prompt[:, :8], max_new_tokens=8, block_length=4, processing_class=tokenizer)
    assert "context" not in caplog.text  # 16 positions fit


def test_block_causal_model_whose_trained_block_does_not_divide_the_budget_says_so(caplog):
    """Issue 20.9 (found while checking): SDAR with `block_size` 4 and max_new_tokens 6 decoded as one block of 6
    without a word."""
    from trl_t3d.generation import diffusion_generate

    tokenizer = testing.make_tokenizer()
    model = testing.make_sdar(tokenizer)
    model.config.block_size = 4
    prompt = torch.tensor([tokenizer("1+1=")["input_ids"]])
    with caplog.at_level("WARNING"):
        diffusion_generate(model, prompt, max_new_tokens=6, processing_class=tokenizer)
    assert "trained with blocks of 4 tokens, which do not divide max_new_tokens=6" in caplog.text
    assert "(e.g. 8)" in caplog.text
