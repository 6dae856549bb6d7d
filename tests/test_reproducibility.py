"""Training states that are reproducible, independent per rank and worker, and replayed exactly after a resume.

See `trl_t3d/trainer/randomness.py`. The multi-process side (ranks draw different states; N processes train on the
states of 1 process) runs under `accelerate launch` in `tests/test_distributed.py`.
"""

import pytest
import torch
from datasets import Dataset

from trl_t3d import DDOTrainer, testing
from trl_t3d.trainer.collator import DDODataCollator
from trl_t3d.trainer.randomness import ROUND_KEY, STATE_KEY, KeyedRows, KeyedSampler, derive_seed

PAD, MASK = 0, 2


@pytest.fixture(scope="module")
def tok():
    return testing.make_tokenizer()


def rows(tok, n=8, completion_length=8, block_length=4, seed=0):
    return testing.synthetic_trajectories(tok, n, completion_length, block_length, seed, prompt_lengths=(5,))


def config(output_dir, **kw):
    return testing.quick_ddo_config(output_dir, **{"learning_rate": 1e-2, **kw})


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    "peft, num_rows",
    [
        (False, 8),  # full fine-tuning; checkpoint 3 is inside epoch 0 (4 steps of 2 rows)
        (True, 6),  # LoRA; checkpoint 3 ends epoch 0 (3 steps): step 4 draws the states of epoch 1
    ],
)
def test_resume_reproduces_the_uninterrupted_run(tok, tmp_path, peft, num_rows):
    """Random states (default mask ratios, 10% random tokens), fake tokens and mean-field samples drawn at temperature
    1 and a reference that is an earlier policy at the checkpoint (synced at step 2, saved at 3): the resumed run
    repeats the losses and weights step for step."""
    from peft import LoraConfig

    args = dict(
        max_steps=4,
        save_strategy="steps",
        save_steps=3,
        reference_temperature=1.0,
        ref_sync_steps=2,
        loss_type=["ddo", "path", "mean_field"],  # the mean-field term's student samples are random too
        loss_weights=[1.0, 0.2, 1.0],
    )

    def trainer():
        return DDOTrainer(
            testing.make_generic_mlm(tok),
            args=config(tmp_path / "out", **args),
            train_dataset=rows(tok, n=num_rows),
            processing_class=tok,
            peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False) if peft else None,
        )

    uninterrupted = trainer()
    uninterrupted.train()
    folder = tmp_path / "out" / "checkpoint-3"
    assert (folder / "t3d_reference.safetensors").exists()
    assert not list(folder.glob("t3d_rng_state*"))  # every draw is keyed by its example: no generator state to save
    assert not (tmp_path / "out" / "checkpoint-4" / "t3d_reference.safetensors").exists()  # a boundary: the policy

    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(folder))
    assert len(losses(resumed)) == 4
    assert losses(resumed) == losses(uninterrupted)
    final = dict(uninterrupted.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        assert torch.equal(param, final[name]), name
        assert param.requires_grad == final[name].requires_grad, name


def test_resume_from_a_boundary_rebuilds_the_reference_from_the_policy(tok, tmp_path):
    args = dict(max_steps=3, save_strategy="steps", save_steps=2, ref_sync_steps=2)
    make = lambda: DDOTrainer(  # noqa: E731
        testing.make_generic_mlm(tok),
        args=config(tmp_path / "out", **args),
        train_dataset=rows(tok),
        processing_class=tok,
    )
    uninterrupted = make()
    uninterrupted.train()
    (tmp_path / "out" / "checkpoint-3").rename(tmp_path / "later")  # resume_from_checkpoint=True: the last one
    resumed = make()
    resumed.train(resume_from_checkpoint=True)
    assert losses(resumed) == losses(uninterrupted)
    for ref, expected in zip(resumed.ref_model.parameters(), uninterrupted.ref_model.parameters()):
        assert torch.equal(ref, expected) and not ref.requires_grad  # the policy of step 2


@pytest.mark.parametrize("peft", [False, True])
def test_resume_with_recollection_trains_on_the_interrupted_rounds_trajectories(tok, tmp_path, monkeypatch, peft):
    """Prompts only, fresh trajectories each round (syncs at 2 and 4), checkpoint at 3 inside round 1: the resumed
    run recollects round 1's trajectories with the restored reference and repeats losses and weights exactly."""
    from peft import LoraConfig

    collected = []
    original = DDOTrainer._collect

    def counting_collect(self, model, *args, **kwargs):
        dataset = original(self, model, *args, **kwargs)
        collected.append(dataset["completion_ids"])
        return dataset

    monkeypatch.setattr(DDOTrainer, "_collect", counting_collect)
    prompts = Dataset.from_list([{"prompt": p} for p in ("1+1=", "2+3=", "perm:abc", "12+9=", "ab", "7+7=")])
    settings = dict(max_steps=5, save_strategy="steps", save_steps=3, ref_sync_steps=2, recollect_each_round=True)
    settings.update(generation_max_new_tokens=8, generation_block_length=4, max_completion_length=8)

    def trainer():
        return DDOTrainer(
            testing.make_generic_mlm(tok),
            args=config(tmp_path / "out", **settings),
            train_dataset=prompts,
            processing_class=tok,
            peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False) if peft else None,
        )

    uninterrupted = trainer()
    uninterrupted.train()
    assert len(collected) == 3  # the teacher, then the references of steps 2 and 4
    assert collected[1] != collected[0]  # the rounds train on different data: recollection matters
    round_one = collected[1]

    collected.clear()
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert len(collected) == 3 and collected[1] == round_one  # the teacher, round 1 again (restored), step 4
    assert losses(resumed) == losses(uninterrupted)
    final = dict(uninterrupted.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        assert torch.equal(param, final[name]), name


# ---------------------------------------------------------------------------------------------- workers, seeds
def test_dataloader_workers_train_on_the_same_states(tok, tmp_path):
    runs = []
    for workers in (0, 2):
        trainer = DDOTrainer(
            testing.make_generic_mlm(tok),
            args=config(tmp_path / str(workers), max_steps=2, dataloader_num_workers=workers),
            train_dataset=rows(tok),
            processing_class=tok,
        )
        trainer.train()
        runs.append(losses(trainer))
    assert runs[0] == runs[1]


def test_seed_decides_the_states(tok, tmp_path):
    def first_batch(seed):
        trainer = DDOTrainer(
            testing.make_generic_mlm(tok),
            args=config(tmp_path / str(seed), max_steps=1, seed=seed, mask_ratio_exponent=0.0),
            train_dataset=rows(tok),
            processing_class=tok,
        )
        return trainer.data_collator([trainer.train_dataset[k] for k in range(8)])["xt"]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


# ---------------------------------------------------------------------------------------------- the pieces
def test_keyed_rows_give_accelerates_order():
    """The sampler yields the keys of an epoch in order; the rows they serve follow accelerate's seedable order."""
    from accelerate.data_loader import SeedableRandomSampler

    reference = SeedableRandomSampler(data_source=range(10), data_seed=7)
    sampler = KeyedSampler(10, seed=7)
    data = KeyedRows(Dataset.from_list([{"row": i} for i in range(10)]), seed=7, shuffle=True)
    for epoch in (0, 1, 5):
        reference.set_epoch(epoch)
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert keys == list(range(epoch * 10, epoch * 10 + 10))
        assert [data[k]["row"] for k in keys] == list(reference)
    assert list(KeyedSampler(4, seed=0, shuffle=False)) == [0, 1, 2, 3]
    assert list(KeyedSampler(4, seed=0, shuffle=False)) == [0, 1, 2, 3]  # a fresh sampler starts at epoch 0


def test_keyed_rows_carry_their_key_and_round():
    data = KeyedRows(Dataset.from_list([{"a": i} for i in range(4)]))
    assert data[6] == {"a": 2, STATE_KEY: 6, ROUND_KEY: 0} and len(data) == 4 and data.column_names == ["a"]
    assert derive_seed(0, "state", 1) != derive_seed(0, "state", 2) != derive_seed(1, "state", 1)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("new_rows", [6, 3])  # a later round keeps more / fewer trajectories than round 0's 4
def test_a_round_serves_each_of_its_rows_once_per_pass(shuffle, new_rows):
    """After a swap at key 5, every `new_rows` consecutive keys serve each new row exactly once (the stale length of
    round 0 left rows 4 and 5 untrained, or served rows twice per epoch); keys before 5 keep round 0's rows."""
    data = KeyedRows(Dataset.from_list([{"a": i} for i in range(4)]), seed=3, shuffle=shuffle)
    before = [data[k]["a"] for k in range(5)]
    data.swap(Dataset.from_list([{"a": 10 + i} for i in range(new_rows)]), start_key=5)
    assert [data[k]["a"] for k in range(5)] == before
    for start in (5, 5 + new_rows, 5 + 4 * new_rows):
        served = [data[k]["a"] for k in range(start, start + new_rows)]
        assert sorted(served) == [10 + i for i in range(new_rows)], served
    assert {data[k][ROUND_KEY] for k in range(5, 30)} == {1}


@pytest.mark.parametrize("noise", ["mask", "uniform"])
def test_a_keyed_state_does_not_depend_on_its_batch(noise):
    """The same key gives the same state alone or in a batch, whatever the batch's padded length."""
    collator = DDODataCollator(
        pad_token_id=PAD, mask_token_id=MASK, noise=noise, random_token_ratio=0.3, vocab_size=50, mask_ratio_exponent=0
    )
    short = {"prompt_ids": [10, 11], "completion_ids": [20, 21, 22, 23], "step_map": [1, 0, 3, 2], "block_length": 2}
    long = {"prompt_ids": [12], "completion_ids": list(range(30, 38)), "step_map": list(range(8)), "block_length": 2}
    alone = collator([{**short, STATE_KEY: 5}])
    batched = collator([{**long, STATE_KEY: 9}, {**short, STATE_KEY: 5}])
    for key in ("xt", "loss_mask", "decode_rank"):
        assert torch.equal(batched[key][1, :4], alone[key][0]), key
    other = collator([{**short, STATE_KEY: 6}])
    assert not all(torch.equal(other[k], alone[k]) for k in ("xt", "loss_mask"))


def test_examples_without_key_draw_per_rank_and_worker(monkeypatch):
    """Outside DDOTrainer (no `state_key`) the collator's stream is seeded by (seed, rank, worker)."""
    feature = {
        "prompt_ids": [10],
        "completion_ids": list(range(20, 36)),
        "step_map": list(range(16)),
        "block_length": 4,
    }

    def draws():
        collator = DDODataCollator(pad_token_id=PAD, mask_token_id=MASK, random_token_ratio=0.5, vocab_size=50)
        return torch.stack([collator([feature])["xt"][0] for _ in range(4)])

    monkeypatch.delenv("RANK", raising=False)
    rank0 = draws()
    monkeypatch.setenv("RANK", "1")
    rank1 = draws()
    assert not torch.equal(rank0, rank1)
    monkeypatch.setenv("RANK", "0")
    assert torch.equal(draws(), rank0)


def test_diffusion_gemma_reads_its_config_through_a_ddp_wrapper(tok):
    """Under DDP the trainer calls the adapter with the wrapper (`.module`, no `.config`)."""
    from trl_t3d.adapters import get_adapter

    model = testing.make_diffusion_gemma(tok, canvas_length=4)
    adapter = get_adapter(model, tokenizer=tok)

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel exposes: `.module`, no `.config`
        def __init__(self, module):
            super().__init__()
            self.module = module

    wrapped = Wrapper(model)
    assert not hasattr(wrapped, "config") and adapter.canvas_length(wrapped) == 4
    key_valid = torch.ones(1, 7, dtype=torch.bool)
    masks, expected = (
        adapter.canvas_masks(wrapped, key_valid, 3, 8, 4),
        adapter.canvas_masks(model, key_valid, 3, 8, 4),
    )
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[k], expected[k]) for k in masks)


def test_resume_needs_no_state_of_the_collator(tok):
    """Nothing of the collator is saved: it has no state that training changes."""
    collator = DDODataCollator(pad_token_id=PAD, mask_token_id=MASK)
    feature = dict(rows(tok, n=1)[0], **{STATE_KEY: 3})
    first = collator([feature])["xt"]
    collator([dict(feature, **{STATE_KEY: 4})])
    assert torch.equal(collator([feature])["xt"], first) and collator.generator is None
