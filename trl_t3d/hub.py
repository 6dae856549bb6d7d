"""Sharing on the Hugging Face Hub: the trajectory dataset (with a dataset card) and the distilled student.

Both pushes build the exact folder that is uploaded first (`prepare_*_upload`), then make two `huggingface_hub`
calls: `HfApi.create_repo(..., exist_ok=True)` and `HfApi.upload_folder(...)`. Tests check the folder and the
calls without a network.
"""

from __future__ import annotations

import json
import os
import tempfile

from .trajectories import dataset_metadata

CITATION = """@article{t3d2026,
  title   = {Few-Step Diffusion Language Models via Trajectory Self-Distillation with Direct Discriminative Optimization},
  journal = {arXiv preprint arXiv:2602.12262},
  year    = {2026}
}"""
STUDENT_FILES_REQUIRED = ("config.json", "README.md")


def trajectory_dataset_card(dataset, repo_id: str | None = None, *, license: str | None = None, tags=None) -> str:
    """README.md of a trajectory dataset: what the columns mean, who decoded them and how, and how to train on it."""
    meta = dataset_metadata(dataset)
    tags = sorted({"trl-t3d", "t3d", "diffusion-language-model", "trajectories", *(tags or [])})
    front = ["---"]
    if license:
        front.append(f"license: {license}")
    front += ["task_categories:", "- text-generation", "tags:", *[f"- {t}" for t in tags]]
    front += ["configs:", "- config_name: default", "  data_files:", "  - split: train", "    path: data/train-*"]
    front += ["---", ""]
    name = (repo_id or "trajectories").split("/")[-1]
    teacher = meta.get("teacher") or "unknown"
    gen = meta.get("generation_config") or {}
    lengths = [len(c) for c in dataset["completion_ids"]] if "completion_ids" in dataset.column_names else []
    steps = [max(s) + 1 if s else 0 for s in dataset["step_map"]] if "step_map" in dataset.column_names else []
    tokens_per_forward = sum(lengths) / max(1, sum(steps)) if steps else float("nan")
    settings = "\n".join(
        f"| `{k}` | `{json.dumps(v)}` |" for k, v in sorted(gen.items()) if k != "transformers_version"
    )
    source = f" on prompts from `{meta['dataset_name']}`" if meta.get("dataset_name") else ""
    body = f"""# {name}

Decoding trajectories of **{teacher}**{source}, collected with [trl-t3d](https://github.com/) for T3D trajectory
self-distillation ([arXiv:2602.12262](https://huggingface.co/papers/2602.12262)).

Each row is one completion of the teacher together with its **step map**: the 0-based index of the denoising
forward pass at which each completion token was committed. The token ids are the decoder's own (never re-tokenized
text), so the step map lines up with `completion_ids` token for token.

| column | type | meaning |
|---|---|---|
| `prompt_ids` | list[int] | prompt token ids, no padding (chat template applied) |
| `completion_ids` | list[int] | completion token ids, up to and including the first EOS |
| `step_map` | list[int] | forward pass at which each completion token was committed (same length) |
| `block_length` | int | decoding block length |
| `prompt`, `completion` | str | the same as text (for reading only) |

## Collection

- Teacher: `{teacher}` (revision `{meta.get("teacher_revision") or "unspecified"}`, `{meta.get("adapter", "?")}` family)
- Trajectories: {len(dataset)} ({meta.get("num_without_eos", "?")} reached the token budget without EOS)
- Mean completion length: {(sum(lengths) / len(lengths)) if lengths else float("nan"):.1f} tokens; tokens committed per
  forward: {tokens_per_forward:.2f}
- Reasoning suffix: `{json.dumps(meta.get("reasoning_suffix"))}`
- Collected on {meta.get("date", "?")} with trl-t3d {meta.get("trl_t3d_version", "?")}

| decoding setting | value |
|---|---|
{settings}

## Use

```python
from datasets import load_dataset
from trl_t3d import DDOConfig, DDOTrainer

dataset = load_dataset("{repo_id or name}", split="train")
trainer = DDOTrainer("{teacher}", args=DDOConfig(output_dir="student", block_length={meta.get("block_length", 4)}),
                     train_dataset=dataset)
trainer.train()
```

The full collection metadata is in `trajectory_metadata.json`.

## Citation

```bibtex
{CITATION}
```
"""
    return "\n".join(front) + body


def prepare_dataset_upload(dataset, folder: str, repo_id: str | None = None, **card_kwargs) -> list[str]:
    """Write the files of a trajectory dataset repo into `folder`; return their repo paths (sorted)."""
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    dataset.to_parquet(os.path.join(folder, "data", "train-00000-of-00001.parquet"))
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(trajectory_dataset_card(dataset, repo_id, **card_kwargs))
    with open(os.path.join(folder, "trajectory_metadata.json"), "w") as f:
        json.dump(dataset_metadata(dataset), f, indent=2)
    return _list_files(folder)


def push_trajectories_to_hub(
    dataset,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload T3D trajectories with trl-t3d",
    **card_kwargs,
):
    """Push a trajectory dataset as parquet + dataset card + metadata JSON; returns the commit info.

    (`dataset.push_to_hub` works too, but keeps neither the card nor the metadata, which `datasets` does not
    carry in its YAML.)
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        prepare_dataset_upload(dataset, folder, repo_id, **card_kwargs)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        return api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="dataset", commit_message=commit_message
        )


def check_student_folder(folder: str) -> list[str]:
    """The files of a saved student, after checking it has weights, a tokenizer, a decoding config and a card."""
    files = _list_files(folder)
    names = {os.path.basename(f) for f in files}
    problems = [f for f in STUDENT_FILES_REQUIRED if f not in names]
    if not any(n.endswith(".safetensors") or n.endswith(".bin") for n in names):
        problems.append("weights (*.safetensors)")
    if not names & {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}:
        problems.append("tokenizer files")
    if "diffusion_generation_config.json" not in names:
        problems.append("diffusion_generation_config.json")
    if problems:
        raise ValueError(
            f"{folder} is not a complete student: missing {problems}. Save it with `trainer.save_model(...)` and "
            "`processing_class.save_pretrained(...)` first."
        )
    return files


def push_student_to_hub(
    folder: str,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload T3D few-step student with trl-t3d",
):
    """Push a saved student folder (weights, tokenizer, `diffusion_generation_config.json`, model card)."""
    from huggingface_hub import HfApi

    check_student_folder(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", "trajectories/**"],
    )


def _list_files(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            out.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(out)
