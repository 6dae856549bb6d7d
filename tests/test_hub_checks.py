"""Issue 20.2-20.3: the push checks exactly what it uploads, a failed upload leaves the local card as it was, and a
card can be written from a source checkout that is not pip-installed."""

import os
from pathlib import Path

import pytest

from trl_t3d import testing
from trl_t3d.generation import DiffusionGenerationConfig
from trl_t3d.hub import HubUnreachableError, check_student_folder, push_student_to_hub, student_model_card

CARD = '---\nlibrary_name: transformers\n---\n# s\n\n```python\nrepo_id = "student"\n```\n'


def save_student(folder: Path) -> Path:
    testing.save_generic_mlm(str(folder))
    DiffusionGenerationConfig(block_length=4).save_pretrained(str(folder))
    (folder / "README.md").write_text(CARD)
    return folder


@pytest.fixture
def hub_calls(monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id)))

    def upload_folder(self, *, folder_path, ignore_patterns=None, **kw):
        files = sorted(
            os.path.relpath(os.path.join(r, f), folder_path) for r, _, fs in os.walk(folder_path) for f in fs
        )
        calls.append(("upload_folder", files, Path(folder_path, "README.md").read_text()))
        return "commit"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_checkpoint_only_folder_fails_the_push_check_and_names_the_checkpoint(tmp_path, hub_calls):
    run = tmp_path / "run"
    save_student(run / "checkpoint-3")
    (run / "README.md").write_text(CARD)
    with pytest.raises(ValueError, match=r"missing.*checkpoint-3.*push_student_to_hub\('.*checkpoint-3', repo_id\)"):
        push_student_to_hub(str(run), "me/student")
    assert hub_calls == []  # nothing uploaded, not even the README
    push_student_to_hub(str(run / "checkpoint-3"), "me/student")  # the fix the message names works
    assert hub_calls[0] == ("create_repo", "me/student")


def test_push_uploads_exactly_the_checked_files(tmp_path, hub_calls):
    folder = save_student(tmp_path / "student")
    save_student(folder / "checkpoint-2")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("x")
    (folder / "rng_state.pt").write_bytes(b"x")
    checked = check_student_folder(str(folder))
    assert not any(f.startswith(("checkpoint-", "runs/")) or f.endswith(".pt") for f in checked)
    push_student_to_hub(str(folder), "me/few-step")
    _, uploaded, card = hub_calls[1]
    assert uploaded == checked
    assert 'repo_id = "me/few-step"' in card


def test_failed_upload_leaves_the_local_card_untouched(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    folder = save_student(tmp_path / "student")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)

    def refuse(self, **kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    with pytest.raises(HubUnreachableError):
        push_student_to_hub(str(folder), "me/few-step")
    assert (folder / "README.md").read_text() == CARD


def test_local_card_follows_the_repo_once_the_upload_succeeded(tmp_path, hub_calls):
    folder = save_student(tmp_path / "student")
    push_student_to_hub(str(folder), "me/few-step")
    assert 'repo_id = "me/few-step"' in (folder / "README.md").read_text()


def test_model_card_in_a_source_checkout_that_is_not_installed(monkeypatch):
    """Issue 20.3: `importlib.metadata.version('trl-t3d')` raises in a source checkout; the card (written at every
    checkpoint save) falls back to `trl_t3d.__version__` instead of losing the run."""
    import importlib.metadata

    import trl_t3d

    real_version = importlib.metadata.version

    def version(name):
        if name == "trl-t3d":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    card = student_model_card(
        model_name="s", repo_id="me/s", quick_start="## Quick start\n\nx\n", training_details="### T3D training\n"
    )
    assert f"- trl-t3d: {trl_t3d.__version__}\n" in card.text


def test_training_procedure_section_is_filled_and_explains_the_reference_adapter():
    """Issue 20.12: TRL's "Training procedure" held only empty tracker-badge lines, and a LoRA student's `ref/`
    folder (the self-play reference adapter) was not explained."""
    details = "### T3D training\n\n- Teacher / reference: `m`"
    card = student_model_card(
        model_name="s",
        repo_id="me/s",
        quick_start="## Quick start\n\nx\n",
        training_details=details,
        is_adapter=True,
        reference_adapter="ref",
    )
    section = card.text.split("## Training procedure\n", 1)[1].split("### Framework versions", 1)[0]
    assert "\n\n\n" not in section and not any(line.isspace() for line in section.splitlines())
    assert "trained with T3D-DDO" in section and details in section and "trajectories" in section
    assert "`ref/`" in section and "PeftModel.from_pretrained" in section
    plain = student_model_card(
        model_name="s", repo_id="me/s", quick_start="## Quick start\n\nx\n", training_details=details
    )
    assert "`ref/`" not in plain.text and details in plain.text


def test_lora_student_folder_passes_the_push_check(tmp_path, hub_calls):
    """A LoRA student has `adapter_config.json` and no `config.json`; the check asked for `config.json` anyway."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path / "lora"
    tok = testing.make_tokenizer()
    get_peft_model(testing.make_generic_mlm(tok), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    tok.save_pretrained(folder)
    DiffusionGenerationConfig(block_length=4).save_pretrained(str(folder))
    (folder / "README.md").write_text(CARD)
    assert "config.json" not in os.listdir(folder)
    push_student_to_hub(str(folder), "me/lora")
    assert "adapter_model.safetensors" in hub_calls[1][1]
