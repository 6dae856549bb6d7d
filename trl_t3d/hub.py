"""Sharing on the Hugging Face Hub: the trajectory dataset (with a dataset card) and the distilled student.

Both pushes build the exact folder that is uploaded first (`prepare_*_upload`), then make two `huggingface_hub`
calls: `HfApi.create_repo(..., exist_ok=True)` and `HfApi.upload_folder(...)`. Tests check the folder and the
calls without a network. A Hub that cannot be reached raises `HubUnreachableError`, never a raw transport error.

The student's model card is TRL's (`trl.trainer.utils.generate_model_card`: metadata, framework versions,
citations) with its "Quick start" replaced by code that loads the student as saved: a full model with
`AutoModelForDiffusionLM`, a LoRA adapter with `PeftModel.from_pretrained` on the base.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile

from .generation import speed
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
    step_maps = dataset["step_map"] if "step_map" in dataset.column_names else []
    tokens_per_forward = (
        speed.tokens_per_forward(map(speed.committed_tokens, step_maps), map(speed.forwards_in_step_map, step_maps))
        if step_maps
        else float("nan")
    )
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
        with reaching_the_hub(f"push the trajectories to the dataset repo '{repo_id}'"):
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            return api.upload_folder(
                folder_path=folder, repo_id=repo_id, repo_type="dataset", commit_message=commit_message
            )


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub could not be reached (no network, offline mode, proxy or DNS failure)."""


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP client `huggingface_hub` uses (httpx2, httpx or requests)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        with contextlib.suppress(ImportError):
            errors.append(getattr(__import__(module), name))
    return tuple(errors)


@contextlib.contextmanager
def reaching_the_hub(action: str):
    """Turn a failed connection during `action` into a `HubUnreachableError` that says so and what to do."""
    try:
        yield
    except HubUnreachableError:
        raise
    except _network_errors() as err:
        from huggingface_hub import constants

        raise HubUnreachableError(
            f"Could not reach the Hugging Face Hub at {constants.ENDPOINT} to {action} ({type(err).__name__}: {err}). "
            "Nothing was uploaded. Check the network connection (proxy, `HF_ENDPOINT`; `HF_HUB_OFFLINE=1` forbids "
            "any upload) and retry; a saved student folder can be pushed later with "
            "`trl_t3d.hub.push_student_to_hub(folder, repo_id)`."
        ) from err


# ------------------------------------------------------------------------------------------------ student card
REPO_ID_LINE = re.compile(r'^repo_id = "[^"\n]*"', re.MULTILINE)


def student_quick_start(
    repo_id: str,
    *,
    base_model: str | None = None,
    trust_remote_code: bool = False,
    chat_template: bool = True,
    block_length: int | None = None,
    tokens_per_step: int | None = None,
) -> str:
    """The card's "Quick start": code that loads the student as it is saved and decodes one prompt.

    `base_model` set means the repository holds a LoRA adapter of that model (loaded with `PeftModel`); otherwise it
    holds a full model. The saved `diffusion_generation_config.json` carries the recommended few-step settings.
    """
    remote = ", trust_remote_code=True" if trust_remote_code else ""
    settings = ""
    if block_length and tokens_per_step:
        settings = f"  # few-step decoding: block {block_length}, {tokens_per_step} tokens per step"
    lines = []
    if base_model:
        lines += ["from peft import PeftModel"]
    lines += ["from transformers import AutoTokenizer", "from trl_t3d import AutoModelForDiffusionLM"]
    if base_model:
        lines[-1] += ", DiffusionGenerationConfig"
    lines += ["", f'repo_id = "{repo_id}"']
    if base_model:
        lines += [
            f'base_model = "{base_model}"',
            f'tokenizer = AutoTokenizer.from_pretrained(repo_id, padding_side="left"{remote})',
            f"model = AutoModelForDiffusionLM.from_pretrained(base_model{remote})",
            "model = PeftModel.from_pretrained(model, repo_id)  # the T3D LoRA adapter",
            f"generation_config = DiffusionGenerationConfig.from_pretrained(repo_id){settings}",
        ]
    else:
        lines += [
            f'tokenizer = AutoTokenizer.from_pretrained(repo_id, padding_side="left"{remote})',
            f"model = AutoModelForDiffusionLM.from_pretrained(repo_id{remote})",
            f"generation_config = model.diffusion_generation_config{settings}",
        ]
    lines.append("")
    if chat_template:
        lines += [
            'messages = [{"role": "user", "content": "What is 12 + 30?"}]',
            "inputs = tokenizer.apply_chat_template(",
            '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
            ")",
        ]
    else:
        lines += ['inputs = tokenizer(["What is 12 + 30?"], return_tensors="pt")']
    lines += [
        'output = model.diffusion_generate(inputs["input_ids"], inputs["attention_mask"], generation_config)',
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
    ]
    return "## Quick start\n\n```python\n" + "\n".join(lines) + "\n```\n"


def student_model_card(
    *,
    model_name: str,
    repo_id: str,
    quick_start: str,
    training_details: str,
    teacher: str | None = None,
    base_model: str | None = None,
    is_adapter: bool = False,
    dataset_name: str | None = None,
    tags=(),
    trainer_name: str = "T3D-DDO",
    paper: dict | None = None,
    reference_adapter: str | None = None,
):
    """TRL's model card (`generate_model_card`) for a T3D student: our quick start, training details and versions.

    `reference_adapter`: the name of a second adapter saved beside a LoRA student (PEFT writes it to that subfolder,
    e.g. `ref/`: the self-play reference), which the card then explains.

    Returns a `huggingface_hub.ModelCard`; `card.save(path)` writes it.
    """
    from trl.trainer.utils import generate_model_card

    paper = paper or {}
    card = generate_model_card(
        base_model=base_model,
        model_name=model_name,
        hub_model_id=repo_id,
        dataset_name=dataset_name,
        tags=list(tags),
        wandb_url=None,
        trackio_url=None,
        trainer_name=trainer_name,
        trainer_citation=paper.get("citation"),
        paper_title=paper.get("title"),
        paper_id=paper.get("id"),
    )
    if is_adapter:
        card.data.library_name = "peft"  # the Hub's convention for adapter repositories
    text = card.text
    if base_model is None:  # TRL links "None" when the teacher is a local directory
        text = text.replace(
            "This model is a fine-tuned version of [None](https://huggingface.co/None)",
            f"This model is a few-step student of `{teacher or 'a local model'}`",
        )
    text = _replace_section(text, "## Quick start", quick_start)
    text = _with_training_procedure(text, training_details, reference_adapter)
    text = text.replace("- TRL: ", f"- trl-t3d: {trl_t3d_version()}\n- TRL: ", 1)
    card.text = text
    return card


def student_training_procedure(training_details: str, *, reference_adapter: str | None = None) -> str:
    """The body of the card's "Training procedure": how the student was made, and what each saved folder is for."""
    parts = [
        "Few-step distillation by T3D (trajectory self-distillation): the teacher decoded the prompts slowly and its "
        "trajectories (tokens and the step each was committed at) became the training states; the student learned "
        "with DDO, a discriminative objective against a frozen reference, to commit several tokens per step.",
        training_details.strip(),
    ]
    if reference_adapter:
        parts.append(
            f"The `{reference_adapter}/` folder holds a second LoRA adapter: the frozen reference of the last "
            "self-play round (DDO compares the student with it). Training resumes from it; loading and decoding the "
            f"student need only the adapter at the top of the repository (`PeftModel.from_pretrained` loads that one"
            f" and ignores `{reference_adapter}/`)."
        )
    return "\n\n".join(p for p in parts if p)


def _with_training_procedure(text: str, training_details: str, reference_adapter: str | None) -> str:
    """`text` with TRL's "## Training procedure" (tracker badge lines, empty here) holding our procedure, before its
    "### Framework versions"."""
    body = student_training_procedure(training_details, reference_adapter=reference_adapter)
    start, versions = text.find("## Training procedure\n"), text.find("### Framework versions")
    if start < 0 or versions < start:
        return text.replace("### Framework versions", f"{body}\n\n### Framework versions", 1)
    kept = [
        line for line in text[start + len("## Training procedure\n") : versions].splitlines() if line.strip()
    ]  # TRL's "This model was trained with ..." sentence; the empty badge lines go
    return text[:start] + "\n\n".join(["## Training procedure", *kept, body]) + "\n\n" + text[versions:]


def trl_t3d_version() -> str:
    """The installed distribution's version, else the package's own `__version__` (a source checkout on `PYTHONPATH`
    is not an installed distribution: `importlib.metadata` raises there, and a checkpoint save must not)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl-t3d")
    except PackageNotFoundError:
        from .version import __version__

        return __version__


def _replace_section(text: str, heading: str, section: str) -> str:
    """`text` with the markdown section starting at `heading` (up to the next `## `) replaced by `section`."""
    start = text.find(heading + "\n")
    if start < 0:  # another template: put it before the first section
        start = text.find("\n## ") + 1 if "\n## " in text else len(text)
        return text[:start] + section.rstrip() + "\n\n" + text[start:]
    end = text.find("\n## ", start + len(heading))
    end = len(text) if end < 0 else end + 1
    return text[:start] + section.rstrip() + "\n\n" + text[end:]


# What `push_student_to_hub` leaves out of the upload: checkpoints, logs, optimizer states, cached trajectories.
STUDENT_UPLOAD_IGNORE = ("checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", "trajectories/**")


def card_for_repo(folder: str, repo_id: str) -> str | None:
    """The text of `folder/README.md` with its quick start pointed at `repo_id`; None when there is nothing to change.
    The local file is left as it is."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = REPO_ID_LINE.sub(lambda _: f'repo_id = "{repo_id}"', text, count=1)
    return None if new == text else new


def set_card_repo_id(folder: str, repo_id: str) -> bool:
    """Point the quick start of `folder/README.md` at `repo_id` (the repository it is pushed to); True if changed."""
    new = card_for_repo(folder, repo_id)
    if new is None:
        return False
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(new)
    return True


def student_upload_files(folder: str) -> list[str]:
    """The files of `folder` that `push_student_to_hub` uploads (repo paths, sorted): `huggingface_hub`'s own filter
    with the same ignore patterns, so the check and the upload see one list."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    files = [f.replace(os.sep, "/") for f in _list_files(folder)]
    return sorted(filter_repo_objects(files, ignore_patterns=[*STUDENT_UPLOAD_IGNORE, *DEFAULT_IGNORE_PATTERNS]))


def _student_problems(top_level: set[str]) -> list[str]:
    problems = [f for f in STUDENT_FILES_REQUIRED if f not in top_level]
    if "config.json" in problems and "adapter_config.json" in top_level:
        problems.remove("config.json")  # a LoRA student: its config is the adapter's, the base model has the rest
    if not any(n.endswith((".safetensors", ".bin")) for n in top_level):
        problems.append("weights (*.safetensors)")
    if not top_level & {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}:
        problems.append("tokenizer files")
    if "diffusion_generation_config.json" not in top_level:
        problems.append("diffusion_generation_config.json")
    return problems


def check_student_folder(folder: str) -> list[str]:
    """The files `push_student_to_hub` would upload, after checking that they make a student: weights, config,
    tokenizer, decoding config and card at the top of the folder (checkpoints, which the upload skips, do not count).
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No student folder {folder}: give the `output_dir` the student was saved to.")
    files = student_upload_files(folder)
    problems = _student_problems({f for f in files if "/" not in f})
    if problems:
        checkpoints = sorted(
            (d for d in os.listdir(folder) if re.fullmatch(r"checkpoint-\d+", d)), key=lambda d: int(d.split("-")[1])
        )
        complete = [d for d in checkpoints if not _student_problems(set(os.listdir(os.path.join(folder, d))))]
        hint = (
            "Save the final student with `trainer.save_model(...)` and `processing_class.save_pretrained(...)` first."
        )
        if complete:
            hint = (
                f"The upload skips `checkpoint-*/`, and {folder} holds a student only there ({', '.join(complete)}). "
                f"Push the checkpoint itself (`push_student_to_hub('{os.path.join(folder, complete[-1])}', repo_id)`),"
                " or save the final student into the folder with `trainer.save_model(...)` and "
                "`processing_class.save_pretrained(...)`."
            )
        raise ValueError(
            f"{folder} is not a complete student: missing {problems} among the files it would upload. {hint}"
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
    """Push a saved student folder (weights, tokenizer, `diffusion_generation_config.json`, model card).

    Exactly the files `check_student_folder` checked are uploaded, with the card's quick start pointed at `repo_id`
    so that its code loads what was pushed. The local card is rewritten the same way only once the upload succeeded.
    """
    from huggingface_hub import HfApi

    files = check_student_folder(folder)
    card = card_for_repo(folder, repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        for name in files:  # links to the checked files (no copy of the weights); the retargeted card as a file
            target = os.path.join(staging, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if name == "README.md" and card is not None:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(card)
            else:
                os.symlink(os.path.abspath(os.path.join(folder, name)), target)
        with reaching_the_hub(f"push the student in {folder} to '{repo_id}'"):
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(
                folder_path=staging,
                repo_id=repo_id,
                repo_type="model",
                commit_message=commit_message,
                ignore_patterns=list(STUDENT_UPLOAD_IGNORE),
            )
    set_card_repo_id(folder, repo_id)  # the local card now describes the pushed repository
    return info


def _list_files(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            out.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(out)


def student_training_details(
    *,
    teacher: str,
    family: str,
    is_adapter: bool,
    dataset_name: str | None,
    stats: dict,
    teacher_decoding: dict,
    objective: str,
    preset: str,
    mask_ratios,
    mask_ratio_exponent,
    random_token_ratio,
    global_step: int,
    learning_rate: float,
    ref_sync_steps: int,
    block_length: int,
    tokens_per_step: int,
) -> str:
    """The "T3D training" section of a student's card: teacher, trajectory data (with what was dropped), objective,
    states, optimization, and the recommended few-step decoding saved beside the weights."""
    rounds = f"every {ref_sync_steps} optimizer steps" if ref_sync_steps else "never (one round)"
    steps_per_block = -(-block_length // tokens_per_step)
    return f"""### T3D training

- Teacher / reference: `{teacher}` ({family} family; {"LoRA adapters" if is_adapter else "full fine-tuning"})
- Trajectory data: {dataset_name or "self-collected or user trajectories"}; {stats.get("num_kept", "?")} trajectories
  ({stats.get("num_truncated_prompts", 0)} prompts cut, {stats.get("num_dropped_long_completions", 0)} long and
  {stats.get("num_dropped_empty_completions", 0)} empty completions dropped); teacher decoding: `{json.dumps(teacher_decoding)}`
- Objective: {objective}
- Preset `{preset}`; states: mask ratios {list(mask_ratios)} (p ∝ r^{mask_ratio_exponent}), random-token ratio {random_token_ratio}
- Optimizer steps: {global_step}; learning rate {learning_rate}; reference ← policy {rounds}

Recommended decoding (saved as `diffusion_generation_config.json`, the default of `diffusion_generate`):
semi-autoregressive, block length {block_length}, {tokens_per_step} tokens per step
({steps_per_block} steps per block), low-confidence remasking, temperature 0."""
