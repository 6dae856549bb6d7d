"""`trl-t3d collect | distill | eval`: recipes, overrides, strict keys, help, and the errors a user meets first."""

import json
import os
from pathlib import Path

import datasets
import pytest
import yaml

from trl_t3d import cli
from trl_t3d.trajectories import dataset_metadata

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*/t3d/*.yaml"))


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_top_level_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("collect", "distill", "eval", "--config", "accelerate launch"):
        assert command in out
    assert cli.main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["collect", "distill"])
def test_command_help_reads_well(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: trl-t3d {command}")
    expected = {
        "collect": ["--model_name_or_path", "--prompt_column", "--tokens_per_step", "--shard_size", "--resume"],
        "distill": [
            "--alpha",
            "--lambda_path",
            "--use_peft",
            "--lora_r",
            "--load_in_4bit",
            "--generation_block_length",
            "--lora_target_modules",
            "--reasoning_suffix",
        ],
    }[command]
    for flag in expected:
        assert flag in out
    assert out.count("--lora_target_modules ") <= 2  # one flag (usage + description), not two conflicting ones


def test_distill_recipe_with_override(tmp_path):
    recipe = write_yaml(
        tmp_path / "recipe.yaml",
        {"model_name_or_path": "org/model", "dataset_name": "org/prompts", "output_dir": str(tmp_path / "out"),
         "alpha": 0.5, "beta": 0.1, "learning_rate": 1e-5, "use_peft": True, "lora_r": 8,
         "lora_target_modules": ["q_proj", "v_proj"], "mask_ratios": [1.0, 0.5], "bf16": False},
    )  # fmt: skip
    script_args, training_args, model_args = cli.parse_args(
        "distill", ["--config", recipe, "--alpha", "0.7", "--lora_r", "4"]
    )
    assert (training_args.alpha, training_args.beta, training_args.learning_rate) == (0.7, 0.1, 1e-5)
    assert (model_args.use_peft, model_args.lora_r, model_args.model_name_or_path) == (True, 4, "org/model")
    assert training_args.lora_target_modules == ["q_proj", "v_proj"] and training_args.mask_ratios == [1.0, 0.5]
    assert script_args.dataset_name == "org/prompts"


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipes_parse(recipe, tmp_path):
    script_args, args, model_args = cli.parse_args(
        "distill", ["--config", str(ROOT / recipe), "--output_dir", str(tmp_path), "--bf16", "false"]
    )
    # T3D's settings (T3D_REFERENCE_NOTES.md)
    assert (args.alpha, args.beta, args.lambda_path, args.path_k_steps) == (0.5, 0.1, 0.2, 4)
    assert args.preset == "t3d_paper" and args.generation_temperature == 0.1  # labelled as the paper's
    assert (args.generation_block_length, args.generation_tokens_per_step, args.random_token_ratio) == (4, 1, 0.1)
    assert args.mask_ratios == [1.0, 0.75, 0.5, 0.25] and args.mask_ratio_exponent == 8
    assert (args.warmup_steps, args.num_train_epochs, args.ref_sync_steps) == (20, 30, 10)
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert model_args.use_peft == recipe.endswith("lora.yaml")
    assert args.learning_rate == (1e-4 if model_args.use_peft else 1e-5)
    assert args.trust_remote_code and args.adapter == recipe.split("/")[1]
    assert args.block_length == (8 if "sdar" in recipe else None)
    assert script_args.reasoning_suffix.endswith("within \\boxed{}.") and script_args.reasoning_suffix[0] == "\n"


def test_unknown_recipe_key_is_an_error(tmp_path):
    recipe = write_yaml(
        tmp_path / "bad.yaml", {"model_name_or_path": "m", "output_dir": str(tmp_path), "learning_rte": 1e-5}
    )
    with pytest.raises(ValueError, match="learning_rte"):
        cli.parse_args("distill", ["--config", recipe])
    # a key of another command is unknown too (each command has its own parser; `collect` reads a distill recipe's
    # teacher settings, but a key neither knows is an error)
    recipe = write_yaml(tmp_path / "bad2.yaml", {"model_name_or_path": "m", "output_dir": "o", "alphaa": 0.5})
    with pytest.raises(ValueError, match="alphaa"):
        cli.parse_args("collect", ["--config", recipe])
    recipe = write_yaml(tmp_path / "bad3.yaml", {"model_name_or_path": "m", "output_dir": "o", "alpha": 0.5})
    with pytest.raises(ValueError, match="distill` recipe"):
        cli.parse_args("eval", ["--config", recipe])
    with pytest.raises((ValueError, SystemExit)):
        cli.parse_args("collect", ["--model_name_or_path", "m", "--not_a_flag", "1"])


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}]}) + "\n" for q in ["1+1", "hi"]))
    return str(path)


def test_collect_command_end_to_end(generic_dir, prompts_file, tmp_path):
    recipe = write_yaml(
        tmp_path / "collect.yaml",
        {"model_name_or_path": generic_dir, "max_new_tokens": 8, "block_length": 4, "batch_size": 2, "shard_size": 1},
    )
    out = tmp_path / "trajectories"
    assert cli.main(["collect", "--config", recipe, "--dataset_name", prompts_file, "--output_dir", str(out),
                     "--max_new_tokens", "4"]) == 0  # fmt: skip
    ds = datasets.load_from_disk(str(out))
    meta = dataset_metadata(ds)
    assert len(ds) == 2 and meta["max_new_tokens"] == 4 and meta["teacher"] == generic_dir
    assert meta["dataset_name"] is None  # a local file is not a Hub dataset id
    assert not (out / "shards").exists()
    assert all(len(c) == len(s) <= 4 for c, s in zip(ds["completion_ids"], ds["step_map"]))


def test_dataset_without_prompt_column_names_the_columns_found(generic_dir, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"found \['answer', 'question'\]"):
        cli.main(["collect", "--model_name_or_path", generic_dir, "--dataset_name", str(path), "--output_dir",
                  str(tmp_path / "o")])  # fmt: skip


def test_unknown_model_family_lists_the_supported_ones(tmp_path, prompts_file):

    from trl_t3d import testing

    causal_dir = str(tmp_path / "causal-llama")
    tok = testing.make_tokenizer(causal_dir)
    testing.tiny_llama(len(tok)).save_pretrained(causal_dir)
    # a causal LM of no known family: refused with both fixes (name the family, or declare bidirectional attention)
    with pytest.raises(
        ValueError, match=r"attends causally.*adapter=.*'dream'.*'llada'.*'sdar'.*model.config.is_causal = False"
    ):
        cli.main(["collect", "--model_name_or_path", causal_dir, "--dataset_name", prompts_file, "--output_dir",
                  str(tmp_path / "o")])  # fmt: skip
    assert not os.path.exists(tmp_path / "o")


def test_eval_command_writes_json_and_png(generic_dir, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(3)))
    out = tmp_path / "eval"
    cli.main(["eval", "--model_name_or_path", generic_dir, "--dataset_name", str(path), "--answer_column", "answer",
              "--verifier", "number", "--tokens_per_step", "1", "2", "--max_new_tokens", "4", "--output_dir",
              str(out)])  # fmt: skip
    assert (out / "few_step_eval.json").exists() and any(p.suffix == ".png" for p in out.iterdir())
    cli.main(["eval", "--model_name_or_path", generic_dir, "--dataset_name", str(path), "--answer_column", "answer",
              "--verifier", "number", "--tokens_per_step", "1", "--max_new_tokens", "4", "--block_length", "4",
              "--cache", "dual", "--cache_refresh_interval", "2", "--output_dir", str(out / "cached")])  # fmt: skip
    saved = json.loads((out / "cached" / "few_step_eval.json").read_text())["generation_config"]
    assert (saved["cache"], saved["cache_refresh_interval"]) == ("dual", 2)


def test_readme_commands_parse():
    """Every `trl-t3d ...` command shown in the README parses (recipes included), so the README stays true."""
    import shlex

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text().replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("trl-t3d ")]
    assert {c.split()[1] for c in commands} == {"collect", "distill", "eval"}
    cwd = os.getcwd()
    os.chdir(root)  # recipes are given relative to the repository root
    try:
        for command in commands:
            argv = shlex.split(command.split("#")[0])[1:]
            if argv[0] == "distill":
                argv += ["--bf16", "false"]  # the GPU recipes ask for bf16, which TrainingArguments refuses on CPU
            parsed = cli.parse_args(argv[0], argv[1:])
            assert parsed, command
    finally:
        os.chdir(cwd)


def test_recipe_switches_to_the_recommended_preset_with_one_flag(tmp_path):
    recipe = str(ROOT / "recipes/llada/t3d/config_lora.yaml")
    common = ["--config", recipe, "--output_dir", str(tmp_path), "--bf16", "false"]
    _, args, _ = cli.parse_args("distill", [*common, "--preset", "recommended"])
    assert (args.mask_ratio_exponent, args.random_token_ratio, args.ref_sync_steps, args.generation_temperature) == (
        0.0,
        0.0,
        0,
        0.0,
    )
    # an explicit field beats the preset
    _, args, _ = cli.parse_args("distill", [*common, "--preset", "recommended", "--random_token_ratio", "0.05"])
    assert (args.random_token_ratio, args.mask_ratio_exponent) == (0.05, 0.0)


# ------------------------------------------------------------------------------------------------ issue 20.12
LORA_RECIPE = str(ROOT / "recipes/llada/t3d/config_lora.yaml")
FULL_RECIPE = str(ROOT / "recipes/llada/t3d/config_full.yaml")


def test_recipe_key_typo_gets_did_you_mean(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", {"model_name_or_path": "m", "learning_rte": 1e-5, "bf16": False})
    with pytest.raises(ValueError, match=r"`learning_rte` \(did you mean `learning_rate`\?\)"):
        cli.parse_args("distill", ["--config", recipe])


def test_command_line_abbreviation_is_refused_with_the_full_name(tmp_path):
    """argparse's prefix matching took `--learning_rat 1e-5` as `--learning_rate`: refused, naming the flag."""
    with pytest.raises(ValueError, match=r"`--learning_rat` \(did you mean `--learning_rate`\?\)"):
        cli.parse_args("distill", ["--output_dir", str(tmp_path), "--bf16", "false", "--learning_rat", "1e-5"])
    with pytest.raises(ValueError, match=r"`--max_new_token` \(did you mean `--max_new_tokens`\?\)"):
        cli.parse_args("collect", ["--max_new_token=8"])


def test_collect_reads_a_distill_recipe_as_distill_would(tmp_path):
    """`trl-t3d collect --help` suggests config_lora.yaml: it is accepted, with the teacher decoding distill uses."""
    script_args, model_args, decoding = cli.parse_args("collect", ["--config", LORA_RECIPE, "--output_dir", "o"])
    _, training_args, distill_model = cli.parse_args(
        "distill", ["--config", LORA_RECIPE, "--output_dir", str(tmp_path), "--bf16", "false"]
    )
    teacher = training_args.teacher_generation_settings()
    assert {k: getattr(decoding, k) for k in teacher} == teacher
    assert decoding.temperature == 0.1  # the recipe's preset t3d_paper, resolved as distill resolves it
    assert model_args.model_name_or_path == distill_model.model_name_or_path and model_args.trust_remote_code
    assert (script_args.prompt_column, script_args.seed, script_args.output_dir) == ("problem", 42, "o")
    assert script_args.batch_size == training_args.generation_batch_size


def test_eval_refuses_a_distill_recipe_with_the_command_for_its_student():
    with pytest.raises(
        ValueError, match=r"trl-t3d eval --model_name_or_path LLaDA-8B-Instruct-T3D-LoRA --trust_remote_code"
    ):
        cli.parse_args("eval", ["--config", LORA_RECIPE])
    help_text = cli.make_parser("eval").format_help()
    assert "config_lora.yaml" not in help_text.split("--config")[1].split("--")[0]  # it no longer suggests one


def test_lora_student_from_the_full_recipe_does_not_take_its_hub_model_id(tmp_path):
    common = ["--config", FULL_RECIPE, "--use_peft", "--output_dir", str(tmp_path / "student"), "--bf16", "false"]
    _, args, _ = cli.parse_args("distill", common)
    assert args.hub_model_id is None  # the card then names the output folder, which holds the adapter
    with pytest.raises(ValueError, match=r"hub_model_id: LLaDA-8B-Instruct-T3D.*Pass `--hub_model_id"):
        cli.parse_args("distill", [*common, "--push_to_hub", "true"])
    _, args, _ = cli.parse_args("distill", [*common, "--hub_model_id", "me/llada-lora"])
    assert args.hub_model_id == "me/llada-lora"
    _, args, _ = cli.parse_args("distill", ["--config", FULL_RECIPE, "--bf16", "false"])
    assert args.hub_model_id == "LLaDA-8B-Instruct-T3D"  # the recipe's own run keeps it


def run_command_line(monkeypatch, capsys, *argv):
    monkeypatch.setattr("sys.argv", ["trl-t3d", *argv])
    code = cli.main()
    captured = capsys.readouterr()
    return code, captured.err


def test_user_errors_print_the_message_without_a_traceback(monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setitem(os.environ, "TRL_T3D_TRACEBACK", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_command_line(
        monkeypatch, capsys, "distill", "--config", FULL_RECIPE, "--output_dir", str(tmp_path)
    )
    assert code == 1 and "Traceback" not in err
    assert err.count("\n") == 1 and err.count("--bf16 false") == 1 and err.startswith("trl-t3d distill: error: ")
    code, err = run_command_line(
        monkeypatch, capsys, "eval", "--model_name_or_path", "./no/such/model", "--task", "arithmetic"
    )
    assert code == 1 and "Traceback" not in err and "does not exist" in err and err.count("\n") == 1


def test_a_model_path_that_does_not_exist_says_so_before_the_tokenizer():
    with pytest.raises(FileNotFoundError, match=r"No model folder at './no/such/model': .* does not exist"):
        cli.run("eval", ["--model_name_or_path", "./no/such/model", "--task", "arithmetic"])


def test_help_does_not_import_bitsandbytes():
    """peft imports bitsandbytes eagerly when it is installed, and its import fetches kernels and warns."""
    import subprocess
    import sys

    code = (
        "import sys\nsys.argv = ['trl-t3d', 'collect', '--help']\nfrom trl_t3d import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print('BNB', sys.modules.get('bitsandbytes') is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "BNB False" in result.stdout, result.stderr[-2000:]
    assert "kernels-community" not in result.stderr
    assert cli.asks_for_quantization(["distill", "--load_in_4bit"])
    assert cli.asks_for_quantization(["distill", "--load_in_8bit", "true"])
    assert not cli.asks_for_quantization(["distill", "--load_in_4bit", "false", "--config", FULL_RECIPE])


def test_dataset_config_on_a_local_file_is_said_to_be_ignored(tmp_path, caplog):
    from trl_t3d.scripts.utils import DatasetArguments, load_prompt_dataset

    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "1+1="}\n')
    with caplog.at_level("WARNING"):
        dataset = load_prompt_dataset(DatasetArguments(dataset_name=str(data), dataset_config="main"))
    assert len(dataset) == 1
    assert "`--dataset_config main` is ignored" in caplog.text and "local file" in caplog.text


def test_diffusion_kv_cache_is_importable_at_the_top_level():
    import trl_t3d
    from trl_t3d.generation import DiffusionKVCache

    assert trl_t3d.DiffusionKVCache is DiffusionKVCache


def test_dataset_split_of_a_saved_dataset_without_splits_is_refused(tmp_path):
    """Issue 20.9 (found while checking): `--dataset_split test` on a `save_to_disk` Dataset was ignored."""
    from trl_t3d.scripts.utils import DatasetArguments, load_prompt_dataset

    datasets.Dataset.from_dict({"prompt": ["a", "b"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(
        ValueError, match=r"one dataset without splits, so `--dataset_split test`.*Drop `--dataset_split`"
    ):
        load_prompt_dataset(DatasetArguments(dataset_name=str(tmp_path / "saved"), dataset_split="test"))
    assert len(load_prompt_dataset(DatasetArguments(dataset_name=str(tmp_path / "saved")))) == 2


def test_eval_passes_the_prompt_settings_it_accepts(generic_dir, tmp_path, monkeypatch):
    """Issue 20.9 (found while checking): `trl-t3d eval --apply_chat_template true --reasoning_suffix ...` were
    accepted and then ignored (built-in and dataset tasks alike)."""
    from trl_t3d import evaluation

    seen = {}

    def evaluate_few_step(model, tokenizer, task, **kwargs):
        seen.update(kwargs, prompt_suffix=task.prompt_suffix)
        raise SystemExit(0)

    monkeypatch.setattr(evaluation, "evaluate_few_step", evaluate_few_step)
    argv = ["eval", "--model_name_or_path", generic_dir, "--task", "arithmetic", "--output_dir", str(tmp_path),
            "--apply_chat_template", "true", "--reasoning_suffix", " Think."]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert seen["apply_chat_template"] is True and seen["prompt_suffix"].endswith(" Think.")
