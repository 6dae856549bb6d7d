"""Issue 12, part B: the paths a newcomer follows from the README, each failure of the first try as a regression test.

Full fine-tuning of a model loaded with `AutoModelForDiffusionLM` saves checkpoints; the model card comes from TRL's
card machinery and its quick start loads the student as saved (run here against the saved folder); an unreachable
Hub says so; trajectories that lost their step map are refused; `trl-t3d eval` runs as the README writes it.
"""

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from trl_t3d import AutoModelForDiffusionLM, DDOConfig, DDOTrainer, cli, testing
from trl_t3d.generation import DiffusionGenerationConfig, diffusion_generate
from trl_t3d.hub import HubUnreachableError, push_student_to_hub

ROOT = Path(__file__).resolve().parents[1]


def trajectories(n=4, completion_length=8, block_length=4):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        steps = []
        for start in range(0, completion_length, block_length):
            steps += [start + int(p) for p in torch.randperm(block_length, generator=g)]
        rows.append(
            {
                "prompt_ids": torch.randint(10, 60, (4 + i % 2,), generator=g).tolist(),
                "completion_ids": torch.randint(10, 60, (completion_length,), generator=g).tolist(),
                "step_map": steps,
                "block_length": block_length,
            }
        )
    dataset = Dataset.from_list(rows)
    # what collect_trajectories records; the student's saved decoding config takes its length from here
    dataset.info.description = json.dumps({"max_new_tokens": completion_length, "block_length": block_length})
    return dataset


def config(output_dir, **kw):
    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        activation_checkpointing=False,
        use_cpu=True,
    )
    defaults.update(kw)
    return DDOConfig(**defaults)


def quick_start_code(readme: str, repo_id: str) -> str:
    """The python block of the card's "Quick start", pointed at a local folder instead of the Hub id."""
    section = readme.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code.count('repo_id = "') == 1
    return re.sub(r'^repo_id = ".*"$', f"repo_id = {repo_id!r}", code, flags=re.M)


def run_snippet(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, "<model card quick start>", "exec"), namespace)
    return namespace


def decode(model, generation_config, input_ids, attention_mask):
    return diffusion_generate(model, input_ids, attention_mask, generation_config)


# ------------------------------------------------------------------------------------------------ 1. full save
def test_mixin_does_not_pretend_to_be_a_transformers_generation_model(llada_dir, generic_dir):
    llada = AutoModelForDiffusionLM.from_pretrained(llada_dir, trust_remote_code=True)  # AutoModel, no generate()
    generic = AutoModelForDiffusionLM.from_pretrained(generic_dir)  # LlamaForCausalLM: a real GenerationMixin
    assert type(llada).can_generate() is False and type(generic).can_generate() is True
    assert hasattr(generic, "generation_config") and not hasattr(llada, "generation_config")


def test_full_fine_tune_of_an_automodel_loaded_model_saves_checkpoints_and_reloads(llada_dir, tmp_path):
    model = AutoModelForDiffusionLM.from_pretrained(llada_dir, trust_remote_code=True)
    tok = testing.make_tokenizer()
    out = tmp_path / "full"
    trainer = DDOTrainer(
        model,
        args=config(out, save_strategy="steps", save_steps=1),
        train_dataset=trajectories(),
        processing_class=tok,
    )
    trainer.train()  # before the fix: AttributeError 'LLaDALikeModelLM' object has no attribute 'generation_config'
    trained = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    teacher = AutoModelForDiffusionLM.from_pretrained(llada_dir, trust_remote_code=True).state_dict()
    assert any(not torch.equal(trained[k], teacher[k]) for k in teacher)
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        files = set(os.listdir(out / checkpoint))
        assert {"model.safetensors", "config.json", "diffusion_generation_config.json"} <= files, files
        assert "generation_config.json" not in files  # an AutoModel has no transformers generation config
    reloaded = AutoModelForDiffusionLM.from_pretrained(str(out / "checkpoint-2"), trust_remote_code=True)
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
    assert reloaded.diffusion_generation_config.block_length == 4


# ------------------------------------------------------------------------------------------------ 2. model card
def test_card_is_trls_and_its_quick_start_loads_the_full_student(llada_dir, tmp_path):
    tok = testing.make_tokenizer()
    out = tmp_path / "student"
    trainer = DDOTrainer(
        AutoModelForDiffusionLM.from_pretrained(llada_dir, trust_remote_code=True),
        args=config(out, hub_model_id="me/llada-t3d", loss_type="t3d_mf"),
        train_dataset=trajectories(),
        processing_class=tok,
    )
    trainer.train()
    trainer.save_model()
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "library_name: transformers" in readme
    for line in ("- trl-t3d: ", "- TRL: ", "- Transformers: ", "- Pytorch: ", "- Datasets: ", "- Tokenizers: "):
        assert line in readme, line  # framework versions from TRL's template
    assert "This model was trained with T3D-DDO" in readme and "huggingface.co/papers/2602.12262" in readme
    assert "pipeline(" not in readme  # TRL's causal-LM quick start does not apply to a diffusion LM
    assert "mean_field x 1 (1 query of one position per 8 tokens of a block, fill temperature 0.0)" in readme
    assert "block length 4, 4 tokens per step" in readme
    code = quick_start_code(readme, str(out))
    assert 'repo_id = "me/llada-t3d"' in readme
    assert "trust_remote_code" not in code  # trl_t3d's native LLaDA class loads it, no remote code

    snippet = run_snippet(code)  # the card's code, run literally against the saved folder
    model, generation_config, inputs = snippet["model"], snippet["generation_config"], snippet["inputs"]
    assert (generation_config.block_length, generation_config.tokens_per_step) == (4, 4)
    expected = decode(trainer.model.eval(), generation_config, inputs["input_ids"], inputs["attention_mask"])
    assert torch.equal(snippet["output"], expected)  # the trained weights, decoding as recommended
    assert torch.equal(model(inputs["input_ids"]).logits, trainer.model(inputs["input_ids"]).logits)


def test_quick_start_of_a_lora_student_loads_base_plus_adapter(generic_dir, tmp_path):
    from peft import LoraConfig

    tok = testing.make_tokenizer()
    out = tmp_path / "lora"
    trainer = DDOTrainer(
        AutoModelForDiffusionLM.from_pretrained(generic_dir),
        args=config(out),
        train_dataset=trajectories(),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False),
    )
    trainer.train()
    trainer.save_model()
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    readme = (out / "README.md").read_text()
    assert "library_name: peft" in readme
    code = quick_start_code(readme, str(out))
    assert "PeftModel.from_pretrained" in code and f'base_model = "{generic_dir}"' in code
    assert "trust_remote_code" not in code  # a transformers-native Llama needs no remote code

    snippet = run_snippet(code)
    inputs, generation_config = snippet["inputs"], snippet["generation_config"]
    assert (generation_config.block_length, generation_config.tokens_per_step) == (4, 4)
    student = trainer.model.eval()
    expected = decode(student, generation_config, inputs["input_ids"], inputs["attention_mask"])
    assert torch.equal(snippet["output"], expected)
    with torch.no_grad():
        logits = snippet["model"](input_ids=inputs["input_ids"]).logits
        torch.testing.assert_close(logits, student(input_ids=inputs["input_ids"]).logits)
        with student.disable_adapter():  # the adapter matters: without it the logits differ
            assert not torch.allclose(logits, student(input_ids=inputs["input_ids"]).logits)

    # the folder also loads in one call, as a full student does: base + adapter, the student's decoding settings
    from peft import PeftModel

    direct = AutoModelForDiffusionLM.from_pretrained(str(out))
    assert isinstance(direct, PeftModel) and not direct.training
    assert (direct.diffusion_generation_config.block_length, direct.diffusion_generation_config.tokens_per_step) == (
        4,
        4,
    )
    with torch.no_grad():
        torch.testing.assert_close(direct(input_ids=inputs["input_ids"]).logits, logits)
    output = direct.diffusion_generate(inputs["input_ids"], inputs["attention_mask"], processing_class=tok)
    assert torch.equal(output, expected)


def test_a_path_that_does_not_exist_says_so():
    with pytest.raises(OSError, match=r"No model directory at './no/such/student': the path does not exist"):
        AutoModelForDiffusionLM.from_pretrained("./no/such/student")


def test_push_student_points_the_card_at_the_repo_it_pushes_to(generic_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    tok = testing.make_tokenizer()
    out = tmp_path / "student"
    trainer = DDOTrainer(
        AutoModelForDiffusionLM.from_pretrained(generic_dir),
        args=config(out, max_steps=1),
        train_dataset=trajectories(),
        processing_class=tok,
    )
    trainer.train()
    trainer.save_model()
    assert 'repo_id = "student"' in (out / "README.md").read_text()
    cards = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(
        HfApi,
        "upload_folder",
        lambda self, *, folder_path, **kw: cards.append(Path(folder_path, "README.md").read_text()),
    )
    push_student_to_hub(str(out), "someone/few-step-student")
    assert 'repo_id = "someone/few-step-student"' in cards[0] and 'repo_id = "student"' not in cards[0]


# ------------------------------------------------------------------------------------------------ offline hub
@pytest.fixture
def unreachable_hub(monkeypatch):
    """A Hub endpoint that refuses connections (localhost, port 9): the real transport error, no network used."""
    import transformers.utils.hub
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", HfApi(endpoint="http://127.0.0.1:9"))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")


def test_trainer_push_to_hub_without_network_says_the_hub_is_unreachable(generic_dir, tmp_path, unreachable_hub):
    tok = testing.make_tokenizer()
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=config(tmp_path / "s"), train_dataset=trajectories(), processing_class=tok
    )
    with pytest.raises(HubUnreachableError, match="Could not reach the Hugging Face Hub at http://127.0.0.1:9") as err:
        trainer.push_to_hub()
    assert "ConnectError" in str(err.value) and "push_student_to_hub" in str(err.value)
    with pytest.raises(HubUnreachableError, match="create the repository 'me/s'"):  # push_to_hub=True at init
        config_ = config(tmp_path / "s2", push_to_hub=True, hub_model_id="me/s")
        DDOTrainer(testing.make_generic_mlm(tok), args=config_, train_dataset=trajectories(), processing_class=tok)


def test_push_student_offline_mode_says_the_hub_is_unreachable(tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder = tmp_path / "student"
    testing.save_generic_mlm(str(folder))
    DiffusionGenerationConfig(block_length=4).save_pretrained(str(folder))
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n# s\n")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="offline mode is enabled"):
        push_student_to_hub(str(folder), "me/student")


# ------------------------------------------------------------------------------------------------ trajectories
def test_trajectories_that_lost_their_step_map_are_refused_not_recollected(generic_dir, tmp_path):
    tok = testing.make_tokenizer()
    data = trajectories().add_column("prompt", ["a"] * 4).remove_columns("step_map")
    with pytest.raises(ValueError, match=r"no `step_map` column.*remove_columns\(\['completion_ids'\]\)"):
        DDOTrainer(testing.make_generic_mlm(tok), args=config(tmp_path), train_dataset=data, processing_class=tok)
    path = tmp_path / "no_step_map"
    data.save_to_disk(str(path))
    with pytest.raises(ValueError, match="no `step_map` column"):
        cli.main(["distill", "--model_name_or_path", generic_dir, "--dataset_name", str(path), "--output_dir",
                  str(tmp_path / "o"), "--use_cpu", "true", "--bf16", "false"])  # fmt: skip
    assert not (tmp_path / "o" / "trajectories").exists()  # nothing was collected


def test_empty_trajectory_dataset_is_a_clear_error(tmp_path):
    tok = testing.make_tokenizer()
    empty = trajectories().select([])
    with pytest.raises(ValueError, match=r"trajectory dataset is empty \(0 rows"):
        DDOTrainer(testing.make_generic_mlm(tok), args=config(tmp_path), train_dataset=empty, processing_class=tok)


# ------------------------------------------------------------------------------------------------ CLI
def test_distill_help_starts_with_t3d_and_data_options_and_documents_config(capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "usage: trl-t3d distill [-h] [--config RECIPE.yaml] [--<argument> VALUE ...]"
    assert "--config RECIPE.yaml  YAML recipe" in out
    sections = [line for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert sections[1:] == [
        "data (DistillArguments):",
        "T3D / DDO: loss, training states, reference, teacher decoding, student (DDOConfig):",
        "model, LoRA and 4-bit loading (trl.ModelConfig):",
        "training (transformers.TrainingArguments: optimizer, schedule, precision, saving, logging, hub):",
    ]
    training = out.index("training (transformers.TrainingArguments")
    for flag in ("--alpha", "--lambda_path", "--generation_block_length", "--dataset_name", "--use_peft"):
        assert out.index(flag) < training, flag
    assert out.index("--learning_rate") > training and out.index("--per_device_train_batch_size") > training


def test_bf16_recipe_on_a_cpu_machine_says_how_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = str(ROOT / "recipes" / "sdar" / "t3d" / "config_full.yaml")
    with pytest.raises(ValueError, match=r"--bf16 false.*--use_cpu true"):
        cli.parse_args("distill", ["--config", recipe, "--output_dir", str(tmp_path)])
    _, args, _ = cli.parse_args("distill", ["--config", recipe, "--output_dir", str(tmp_path), "--bf16", "false"])
    assert args.bf16 is False
    for path in sorted((ROOT / "recipes").glob("*/t3d/*.yaml")):  # every recipe that asks for bf16 says so
        text = path.read_text()
        if re.search(r"^bf16: true", text, re.M):
            assert "--bf16 false" in text, path


def test_readme_eval_command_runs_as_written(generic_dir, tmp_path, capsys, monkeypatch):
    """The README's `trl-t3d eval` line, with a tiny local model in place of ./SDAR-4B-Chat-T3D (its speed is measured in
    benchmarks/, not asserted here)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    line = next(line.strip() for line in text.splitlines() if line.strip().startswith("trl-t3d eval "))
    argv = shlex.split(line.split("#")[0])[1:]
    argv[argv.index("--model_name_or_path") + 1] = generic_dir
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    header = "| model | task | acc @ 1 tok/step (NFE) | acc @ 2 tok/step (NFE) | acc @ 4 tok/step (NFE) | acc @ 8 tok/step (NFE)"
    assert header in out and f"| {generic_dir} | arithmetic |" in out
    assert "8 new tokens in blocks of 8" in out  # the built-in task's lengths: every budget fits one block
    report = json.loads((tmp_path / "eval" / "few_step_eval.json").read_text())
    results = {r["tokens_per_step"]: r for r in report["results"]}
    assert sorted(results) == [1, 2, 4, 8] and report["generation_config"]["block_length"] == 8
    for k, r in results.items():  # one block of 8 tokens, k per step: 8 / k forwards for the whole batch
        assert r["nfe_per_batch"] == 8 / k, (k, r["nfe_per_batch"])
        assert r["num_correct"] == round(r["accuracy"] * report["num_examples"])
        assert f"| {100 * r['accuracy']:.1f} ({r['nfe']:.1f}) |" in out  # the printed table is the report's


def test_eval_budget_larger_than_the_block_names_the_fix(generic_dir, tmp_path):
    with pytest.raises(ValueError, match=r"exceed --block_length.*Pass `--block_length 8`"):
        cli.main(["eval", "--model_name_or_path", generic_dir, "--task", "arithmetic", "--block_length", "4",
                  "--output_dir", str(tmp_path)])  # fmt: skip


# ------------------------------------------------------------------------------------------------ caches
def test_hugging_face_caches_live_in_a_temp_dir_of_the_session(tmp_path):
    """Remote code and datasets never land in the shared ~/.cache/huggingface, also from a subprocess."""
    import subprocess
    import sys
    import tempfile

    import datasets.config
    from huggingface_hub import constants
    from transformers import AutoConfig
    from transformers.utils import hub

    home = os.environ["HF_HOME"]
    assert home.startswith(tempfile.gettempdir()) and "/.cache/" not in home
    for path in (hub.HF_MODULES_CACHE, constants.HF_HUB_CACHE, datasets.config.HF_DATASETS_CACHE):
        assert str(path).startswith(home), path
    code = "from transformers import PretrainedConfig\n\nclass TinyRemoteConfig(PretrainedConfig):\n    model_type = 'tiny_remote_x'\n"
    (tmp_path / "configuration_tiny_remote.py").write_text(code)
    config = {"model_type": "tiny_remote_x", "auto_map": {"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    AutoConfig.from_pretrained(str(tmp_path), trust_remote_code=True)
    modules = [p for p in Path(hub.HF_MODULES_CACHE).rglob("configuration_tiny_remote.py")]
    assert modules and all(str(p).startswith(home) for p in modules)
    child = subprocess.run(
        [sys.executable, "-c", "from transformers.utils import hub; print(hub.HF_MODULES_CACHE)"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert child.stdout.strip().startswith(home)


# ------------------------------------------------------------------------------------------------ trajectory cache
def test_distill_trajectory_cache_is_reused_only_for_the_same_collection(generic_dir, tmp_path):
    """Issue 20.7: the cached self-collected trajectories are reused only when the collection fingerprint (prompts,
    teacher, decoding settings, seed) matches; other `generation_*` settings are refused with what differs."""
    from trl_t3d.resolved import load_tokenizer
    from trl_t3d.scripts.distill import load_or_collect_trajectories
    from trl_t3d.scripts.utils import load_diffusion_model

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["1+1=", "2+2=", "abc"]))
    common = ["--model_name_or_path", generic_dir, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
              "--generation_max_new_tokens", "8", "--max_completion_length", "8", "--bf16", "false",
              "--use_cpu", "true", "--report_to", "none"]  # fmt: skip
    model, tok = load_diffusion_model(generic_dir), load_tokenizer(generic_dir)

    def trajectories_for(*extra):
        script_args, training_args, _ = cli.parse_args("distill", [*common, *extra])
        return load_or_collect_trajectories(script_args, training_args, model, tok, generic_dir)[0]

    first = trajectories_for()
    assert trajectories_for()["completion_ids"] == first["completion_ids"]  # same settings: the cache
    with pytest.raises(ValueError, match=r"another collection: decoding `temperature` 0\.0, this run 0\.5.*rm -r"):
        trajectories_for("--generation_temperature", "0.5")
    with pytest.raises(ValueError, match=r"decoding `block_length` 4, this run 8"):
        trajectories_for("--generation_block_length", "8")
    with pytest.raises(ValueError, match=r"`seed` 42, this run 3"):
        trajectories_for("--seed", "3")


def test_distill_applies_model_init_kwargs_and_refuses_two_dtypes(generic_dir, tmp_path, monkeypatch):
    """Issue 20.9 (found while checking): `trl-t3d distill` applied only `dtype` of `model_init_kwargs` and dropped the
    rest, and `--dtype` lost to `model_init_kwargs.dtype` without a word."""
    from trl_t3d.scripts import distill

    common = ["--model_name_or_path", generic_dir, "--output_dir", str(tmp_path), "--bf16", "false"]
    args = cli.parse_args("distill", [*common, "--dtype", "float16", "--model_init_kwargs", '{"dtype": "bfloat16"}'])
    with pytest.raises(ValueError, match=r"Two values for the model's `dtype`: `--dtype float16` and .*bfloat16"):
        distill.main(*args)
    seen = {}

    def load(name, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(distill, "load_diffusion_model", load)
    args = cli.parse_args(
        "distill", [*common, "--model_init_kwargs", '{"dtype": "bfloat16", "low_cpu_mem_usage": true}']
    )
    with pytest.raises(SystemExit):
        distill.main(*args)
    assert seen["dtype"] == "bfloat16" and seen["low_cpu_mem_usage"] is True
