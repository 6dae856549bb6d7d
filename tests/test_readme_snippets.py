"""The README's Python snippets, run literally in order as a new user pastes them, with a tiny local LLaDA in place of
the Hub id. Only what cannot run offline is replaced: the Hub id (a local directory in the published layout), GSM8K
(`load_dataset` returns a few local questions in its columns), the upload (HfApi's network calls), and `bf16=True`,
which the snippet itself says to drop on a CPU-only machine."""

import os
import re
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from huggingface_hub import HfApi

from trl_t3d import testing

README = Path(__file__).resolve().parent.parent / "README.md"
HUB_ID = "GSAI-ML/LLaDA-8B-Instruct"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_snippets_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3 and HUB_ID in blocks[0] and "DDOTrainer" in blocks[-1]
    model_dir = testing.save_llada(str(tmp_path / "llada"))
    monkeypatch.chdir(tmp_path)  # the snippets write ./trajectories and ./LLaDA-8B-T3D

    questions = datasets.Dataset.from_dict({"question": ["1+2=", "12+7=", "perm:abc", "30+4="], "answer": [""] * 4})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: questions)
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        uploads.append(("create_repo", repo_id))
        return SimpleNamespace(repo_id=repo_id)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(
        HfApi,
        "upload_folder",
        lambda self, *, folder_path, repo_id, **kw: uploads.append(
            ("upload", repo_id, sorted(os.listdir(folder_path)))
        ),
    )

    namespace = {}
    for block in blocks:
        code = block.replace(HUB_ID, model_dir)
        if not torch.cuda.is_available():
            assert "bf16=True)  # on a CPU-only machine: drop bf16" in code or "bf16" not in code
            code = code.replace("bf16=True)", "bf16=False)")
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code

    out = namespace["out"]
    assert out.sequences.shape[1] == namespace["enc"]["input_ids"].shape[1] + 256
    trajectories = namespace["trajectories"]
    assert len(trajectories) == 4 and all(len(s) == 256 for s in trajectories["step_map"])
    trainer = namespace["trainer"]
    assert trainer.state.global_step > 0 and type(trainer.model.get_base_model()).__name__ == "LLaDAModelLM"
    kinds = [u[0] for u in uploads]
    assert "create_repo" in kinds and "upload" in kinds
    uploaded = next(u[2] for u in uploads if u[0] == "upload")
    assert {"README.md", "adapter_config.json", "diffusion_generation_config.json"} <= set(uploaded)


@pytest.mark.parametrize("block", [0, 1])
def test_decoding_snippets_name_real_options(block):
    """Every keyword the decoding snippets pass is a DiffusionGenerationConfig field (a typo would fail silently in
    prose, never here)."""
    from trl_t3d import DiffusionGenerationConfig

    code = python_blocks()[block]
    start, depth = code.index("diffusion_generate(") + len("diffusion_generate("), 1
    end = start
    while depth:  # the call's own parentheses
        depth += {"(": 1, ")": -1}.get(code[end], 0)
        end += 1
    call = code[start:end]
    keywords = set(re.findall(r"(\w+)=", call))
    config = DiffusionGenerationConfig()
    assert keywords and all(hasattr(config, k) for k in keywords), keywords
