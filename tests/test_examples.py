"""The examples end to end on tiny saved models: collect -> distill a few steps -> save -> reload -> decode.

Each example's `main` runs in this process (fast); one run goes through `accelerate launch` with 2 CPU processes
(`test_accelerate_launch_two_processes`, marked `accelerate_launch`).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

from trl_t3d import generation, testing
from trl_t3d.scripts.utils import load_diffusion_model
from trl_t3d.trajectories import dataset_metadata

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["1+1=", "2+3=?", "hello", "abc"]
# What a saved (or pushed) full student holds: weights, tokenizer, decoding config and card.
SAVED_STUDENT_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "diffusion_generation_config.json",
    "README.md",
}


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": q, "problem": q}) + "\n" for q in PROMPTS))
    return str(path)


def tiny_args(model_dir, prompts_file, output_dir, *extra):
    return [
        "--model_name_or_path", model_dir, "--dataset_name", prompts_file, "--output_dir", str(output_dir),
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--generation_max_new_tokens", "8",
        "--max_completion_length", "8", "--dtype", "float32", "--bf16", "false", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--use_cpu", "true", "--learning_rate", "1e-3",
        "--collect_shard_size", "2", *extra,
    ]  # fmt: skip


def decode_with_saved_config(model, tokenizer, output_dir, prompt_ids):
    config = generation.DiffusionGenerationConfig.from_pretrained(output_dir)
    out = generation.diffusion_generate(
        model, torch.tensor([prompt_ids]), generation_config=config, processing_class=tokenizer, max_new_tokens=8
    )
    return config, out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize(
    "example, fixture, family",
    [
        ("distill_llada", "llada_dir", "llada"),
        ("distill_sdar", "sdar_dir", "sdar"),
        ("distill_dream", "dream_dir", "dream"),
    ],
)
def test_example_end_to_end(example, fixture, family, request, prompts_file, tmp_path):
    from transformers import AutoTokenizer

    model_dir = request.getfixturevalue(fixture)
    out = tmp_path / "student"
    module = load_example(example)
    script_args, training_args, model_args = module.parse_args(tiny_args(model_dir, prompts_file, out))
    assert training_args.adapter == family and training_args.trust_remote_code  # the example's defaults
    trainer = module.main(script_args, training_args, model_args)
    assert trainer.state.global_step == 2

    # 1. the prompt-only dataset was collected (cached, in dataset order, with metadata)
    trajectories = datasets.load_from_disk(str(out / "trajectories"))
    meta = dataset_metadata(trajectories)
    assert len(trajectories) == len(PROMPTS) and meta["teacher"] == model_dir and meta["adapter"] == family
    assert [t.endswith("<|assistant|>") for t in trajectories["prompt"]] == [True] * len(PROMPTS)
    assert [PROMPTS[i] in t for i, t in enumerate(trajectories["prompt"])] == [True] * len(PROMPTS)
    assert not any(name.startswith("shard") for name in os.listdir(out / "trajectories"))

    # 2. the saved student: weights, tokenizer, decoding config, card
    files = set(os.listdir(out))
    assert SAVED_STUDENT_FILES <= files
    assert "t3d" in (out / "README.md").read_text()

    # 3. reload: the same weights as the trained model, different from the teacher's; it decodes
    student = load_diffusion_model(str(out), trust_remote_code=True)
    teacher = load_diffusion_model(model_dir, trust_remote_code=True)
    trained = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0)
    assert any(not torch.equal(p, student.state_dict()[n]) for n, p in teacher.state_dict().items())
    tokenizer = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    config, completion = decode_with_saved_config(student, tokenizer, str(out), trajectories[0]["prompt_ids"])
    assert config.block_length == meta["block_length"] and len(completion) == 8
    assert tokenizer.mask_token_id not in completion


def test_lora_example_saves_family_targets_and_reloads(llada_dir, prompts_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    out = tmp_path / "lora"
    module = load_example("distill_llada")
    args = module.parse_args(
        tiny_args(llada_dir, prompts_file, out, "--use_peft", "--lora_r", "4", "--lora_alpha", "8")
    )
    module.main(*args)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == testing.LLADA_LORA_TARGETS
    assert adapter_config["r"] == 4 and "diffusion_generation_config.json" in os.listdir(out)
    student = PeftModel.from_pretrained(load_diffusion_model(llada_dir, trust_remote_code=True), str(out)).eval()
    _, completion = decode_with_saved_config(
        student, AutoTokenizer.from_pretrained(str(out), trust_remote_code=True), str(out), [5, 20, 30]
    )
    assert len(completion) == 8


def test_qlora_example_loads_the_base_in_4bit(prompts_file, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from trl_t3d import testing

    # Widths are multiples of 64: bitsandbytes' CPU 4-bit kernels (AVX512-BF16 CPUs) quantize in blocks of 64.
    model_dir = testing.save_llada(str(tmp_path / "llada64"), hidden_size=64)
    module = load_example("distill_llada")
    out = tmp_path / "qlora"
    trainer = module.main(*module.parse_args(tiny_args(model_dir, prompts_file, out, "--use_peft", "--load_in_4bit")))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    assert trainer.state.global_step == 2 and (out / "adapter_model.safetensors").exists()


def test_quantized_loading_requires_peft(llada_dir, prompts_file, tmp_path):
    module = load_example("distill_llada")
    args = module.parse_args(tiny_args(llada_dir, prompts_file, tmp_path / "q", "--load_in_4bit"))
    with pytest.raises(ValueError, match="--use_peft"):
        module.main(*args)


def test_push_to_hub_uploads_the_complete_student(sdar_dir, prompts_file, tmp_path, monkeypatch):
    """The network layer is replaced: check the repo, the call, and the files exactly as they would be uploaded."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, folder_path, repo_id, repo_type, commit_message, ignore_patterns=None, **kw):
        files = sorted(
            os.path.relpath(os.path.join(r, f), folder_path) for r, _, fs in os.walk(folder_path) for f in fs
        )
        card = Path(folder_path, "README.md").read_text()
        gen_path = Path(folder_path, "diffusion_generation_config.json")
        gen = json.loads(gen_path.read_text()) if gen_path.exists() else None
        calls.append(("upload_folder", repo_id, repo_type, files, ignore_patterns, card, gen))
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "pushed"
    module = load_example("distill_sdar")
    args = module.parse_args(
        tiny_args(sdar_dir, prompts_file, out, "--push_to_hub", "--hub_model_id", "me/sdar-t3d", "--push_trajectories")
    )
    module.main(*args)
    assert calls[0] == ("create_repo", "me/sdar-t3d", {"repo_type": "model", "private": None, "exist_ok": True})
    _, repo_id, repo_type, files, ignore, card, gen = calls[1]
    assert (repo_id, repo_type) == ("me/sdar-t3d", "model")
    assert SAVED_STUDENT_FILES <= set(files)  # the tiny SDAR is trl_t3d's native class: no modeling code to upload
    assert "trajectories/**" in ignore  # the cached trajectories go to their own dataset repo
    assert card.startswith("---\n") and "ddo x 1 (alpha = 0.5, beta = 0.1)" in card
    assert 'repo_id = "me/sdar-t3d"' in card  # the quick start loads what was pushed
    assert gen["block_length"] == 4
    # ... and the self-collected trajectories went to a dataset repo with a card
    assert calls[2] == (
        "create_repo",
        "me/sdar-t3d-trajectories",
        {"repo_type": "dataset", "private": None, "exist_ok": True},
    )
    assert calls[3][1:3] == ("me/sdar-t3d-trajectories", "dataset") and "README.md" in calls[3][3]


@pytest.mark.accelerate_launch
def test_accelerate_launch_two_processes(llada_dir, prompts_file, tmp_path):
    """`accelerate launch` with 2 CPU processes: each collects its shards, DDP trains, rank 0 saves."""
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "examples" / "distill_llada.py"),
        *tiny_args(llada_dir, prompts_file, out, "--per_device_train_batch_size", "1", "--collect_shard_size", "1"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = datasets.load_from_disk(str(out / "trajectories"))
    meta = dataset_metadata(sharded)
    assert meta["num_processes"] == 2 and meta["num_trajectories"] == len(PROMPTS)
    assert "model.safetensors" in os.listdir(out)
    assert "'epoch': '1'" in result.stdout + result.stderr  # 2 steps x 2 processes x 1 prompt = the 4 prompts
    # The 2 processes' shards, gathered, are the trajectories one process collects with the same settings, in order
    # (timing is measured in benchmarks/, not asserted here).
    from trl_t3d.collect import collect_trajectories
    from trl_t3d.resolved import load_tokenizer
    from trl_t3d.scripts.utils import load_prompt_dataset

    prompts = load_prompt_dataset(
        SimpleNamespace(dataset_name=prompts_file, dataset_config=None, dataset_split="train", max_samples=None)
    )
    alone = collect_trajectories(
        load_diffusion_model(llada_dir, dtype="float32"),
        load_tokenizer(llada_dir),
        prompts,
        meta["generation_config"],
        prompt_column=meta["prompt_column"],
        shard_size=1,
        teacher_name=meta["teacher"],
        reasoning_suffix=meta["reasoning_suffix"],
        apply_chat_template=meta["apply_chat_template"],
        seed=meta["seed"],
        show_progress=False,
    )
    assert dataset_metadata(alone)["fingerprint"] == meta["fingerprint"]
    assert sharded["prompt_ids"] == alone["prompt_ids"] and sharded["completion_ids"] == alone["completion_ids"]
    assert sharded["step_map"] == alone["step_map"]
