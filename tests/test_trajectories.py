"""Trajectory validation: every bad input is a clear error or a counted change, never a silent loss."""

import json
import logging

import pytest
from datasets import Dataset, DatasetInfo

from trl_t3d import testing
from trl_t3d.trajectories import prepare_trajectory_dataset, validate_trajectory_example

MASK = 2


@pytest.fixture(scope="module")
def tok():
    return testing.make_tokenizer()


def _row(**kw):
    row = {
        "prompt_ids": [10, 11, 12],
        "completion_ids": [20, 21, 22, 23, 1],
        "step_map": [1, 0, 3, 2, 4],
        "block_length": 4,
    }
    row.update(kw)
    return row


def test_valid_dataset_passes_unchanged(tok):
    ds = Dataset.from_list([_row(), _row(prompt_ids=[13])])
    out, stats = prepare_trajectory_dataset(ds, tok, 8, 8, return_stats=True)
    assert out.to_list() == ds.to_list()
    assert stats.to_dict() == {
        "num_examples": 2,
        "num_kept": 2,
        "num_truncated_prompts": 0,
        "num_dropped_long_completions": 0,
        "num_dropped_empty_completions": 0,
    }


def test_long_prompts_cut_from_left_long_and_empty_completions_dropped_and_counted(tok, caplog):
    ds = Dataset.from_list(
        [
            _row(prompt_ids=list(range(10, 20))),
            _row(completion_ids=list(range(20, 30)) + [1], step_map=list(range(11))),
            _row(completion_ids=[], step_map=[]),
            _row(),
        ]
    )
    with caplog.at_level(logging.WARNING):
        out, stats = prepare_trajectory_dataset(
            ds, tok, max_prompt_length=4, max_completion_length=8, return_stats=True
        )
    assert out["prompt_ids"] == [[16, 17, 18, 19], [10, 11, 12]]
    assert (stats.num_truncated_prompts, stats.num_dropped_long_completions, stats.num_dropped_empty_completions) == (
        1,
        1,
        1,
    )
    assert stats.num_kept == 2
    assert "cut from the left" in caplog.text and "dropped" in caplog.text


@pytest.mark.parametrize(
    "row,match",
    [
        (_row(step_map=[0, 1, 2]), "step_map` has 3 entries but the completion has 5"),
        (_row(step_map=[1, 0, -1, 2, 4]), "negative steps"),
        (_row(step_map=[1, 0, 3, 2, 1]), "out of range for block_length=4"),
        (_row(completion_ids=[20, MASK, 22, 23, 1]), "mask token 2 occurs inside `completion_ids`"),
        (_row(prompt_ids=[MASK]), "mask token 2 occurs inside `prompt_ids`"),
        (_row(block_length=None), "no valid `block_length`"),
    ],
)
def test_structural_errors_name_the_fix(tok, row, match):
    with pytest.raises(ValueError, match=match):
        prepare_trajectory_dataset(Dataset.from_list([_row(), row]), tok, 8, 8)


def test_tokenizer_without_mask_and_pad_equal_mask(tok):
    ds = Dataset.from_list([_row()])
    no_mask = testing.make_tokenizer()
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="no mask token"):
        prepare_trajectory_dataset(ds, no_mask, 8, 8)
    assert len(prepare_trajectory_dataset(ds, no_mask, 8, 8, mask_token_id=5)) == 1
    with pytest.raises(ValueError, match="pad_token_id == mask_token_id"):
        prepare_trajectory_dataset(ds, tok, 8, 8, mask_token_id=0)


def test_text_trajectories_and_metadata_block_length(tok):
    ds = Dataset.from_list([{"prompt": "1+1=", "completion": "2.", "step_map": [1, 0]}])
    ds.info.description = json.dumps({"block_length": 2})
    out = prepare_trajectory_dataset(ds, tok, 8, 8)
    assert out[0]["completion_ids"] == tok("2.", add_special_tokens=False)["input_ids"]
    assert out[0]["prompt_ids"] == tok("1+1=", add_special_tokens=False)["input_ids"] and out[0]["block_length"] == 2
    bad = Dataset.from_list(
        [{"prompt": "1+1=", "completion": "2.", "step_map": [0]}], info=DatasetInfo(description='{"block_length": 2}')
    )
    with pytest.raises(ValueError, match="tokenizes to 2 tokens but `step_map` has 1"):
        prepare_trajectory_dataset(bad, tok, 8, 8)
    chat = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}], "completion": "ok", "step_map": [0, 1]}])
    out = prepare_trajectory_dataset(chat, tok, 16, 8, block_length=2)
    assert (
        out[0]["prompt_ids"]
        == tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )


def test_not_a_trajectory_dataset(tok):
    with pytest.raises(ValueError, match="no `step_map` column"):
        prepare_trajectory_dataset(Dataset.from_list([{"prompt": "x"}]), tok, 8, 8)
    example, status = validate_trajectory_example(_row(), mask_token_id=MASK, max_prompt_length=2)
    assert status == "truncated_prompt" and example["prompt_ids"] == [11, 12]
