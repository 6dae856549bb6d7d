"""Trajectory collection: schema, token-exact agreement with the decoder, order, metadata, resumption, the Hub."""

import datetime
import json
import os

import datasets
import pytest
import torch

from trl_t3d import generation, testing
from trl_t3d.collect import collect_trajectories, cut_after_eos, render_prompt
from trl_t3d.trajectories import dataset_metadata, prepare_trajectory_dataset, validate_trajectory_example

DiffusionGenerationConfig = generation.DiffusionGenerationConfig

PROMPTS = ["1+1=", "What is 12*3?", "hi", "Count: 1 2 3 4 5", "x", "abc def", "7-2="]


@pytest.fixture(scope="module")
def tok():
    return testing.make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return testing.make_generic_mlm(tok)


def gen_config(tok, **kw):
    kw = {"max_new_tokens": 8, "block_length": 4, "tokens_per_step": 1, "mask_token_id": tok.mask_token_id, **kw}
    return DiffusionGenerationConfig(**kw)


def conversational(prompts=PROMPTS):
    return datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})


def solo_decode(model, tok, prompt_ids, config):
    """What the decoder writes for one prompt alone (no batching, no padding)."""
    out = generation.diffusion_generate(
        model,
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        generation_config=config,
        processing_class=tok,
        return_dict_in_generate=True,
        output_step_map=True,
    )
    completion = out.sequences[0, len(prompt_ids) :].tolist()
    return cut_after_eos(completion, out.step_map[0].tolist(), [tok.eos_token_id])[:2]


def test_schema_token_ids_and_order_match_the_decoder(model, tok):
    config = gen_config(tok)
    ds = collect_trajectories(
        model,
        tok,
        conversational(),
        config,
        batch_size=3,
        shard_size=4,
        teacher_name="tiny/teacher",
        show_progress=False,
        keep_full_canvas=False,
    )
    assert ds.column_names == ["prompt_ids", "completion_ids", "step_map", "block_length", "prompt", "completion"]
    assert len(ds) == len(PROMPTS)
    for i, row in enumerate(ds):
        # Order: row i is prompt i, rendered through the chat template exactly as TRL would
        expected_text = tok.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i]}], tokenize=False, add_generation_prompt=True
        )
        assert row["prompt"] == expected_text
        assert row["prompt_ids"] == tok(expected_text, add_special_tokens=False)["input_ids"]
        # Token ids and step map are the decoder's own (batched + sorted gives the same as alone)
        completion, step_map = solo_decode(model, tok, row["prompt_ids"], config)
        assert row["completion_ids"] == completion
        assert row["step_map"] == step_map
        assert len(row["step_map"]) == len(row["completion_ids"]) and min(row["step_map"]) >= 0
        assert row["block_length"] == 4
        # A token-by-token (1 per step) teacher commits exactly one token per step
        assert len(set(row["step_map"])) == len(row["step_map"])
        if tok.eos_token_id not in row["completion_ids"]:
            assert sorted(row["step_map"]) == list(range(8))
        checked, status = validate_trajectory_example(row, mask_token_id=tok.mask_token_id, index=i)
        assert status == "ok"
    # The trainer's own validation accepts it as is
    prepared, stats = prepare_trajectory_dataset(ds, tok, return_stats=True)
    assert stats.num_kept == len(PROMPTS)


def test_completion_is_cut_after_the_first_eos_with_its_step_map(model, tok, monkeypatch):
    """A decoder that stops early writes EOS then -1 steps; rows keep up to the first EOS and are counted."""
    eos, pad = tok.eos_token_id, tok.pad_token_id

    def fake_generate(model, input_ids, attention_mask=None, generation_config=None, **kwargs):
        batch, width = input_ids.shape
        completion = torch.tensor([10, 11, eos, eos, eos, eos, eos, eos]).repeat(batch, 1)
        step_map = torch.tensor([1, 0, 2, -1, -1, -1, -1, -1]).repeat(batch, 1)
        completion[0] = torch.tensor([12, 13, 14, 15, 16, 17, 18, 19])  # this one never ends
        step_map[0] = torch.arange(8)
        return generation.DiffusionGenerateOutput(
            sequences=torch.cat([input_ids, completion], 1), step_map=step_map, nfe=8, tokens_per_forward=1.0
        )

    monkeypatch.setattr(generation, "diffusion_generate", fake_generate)
    assert pad != eos
    ds = collect_trajectories(
        model,
        tok,
        conversational(["a", "bb"]),
        gen_config(tok),
        batch_size=2,
        show_progress=False,
        keep_full_canvas=False,
    )
    rows = sorted(ds, key=lambda r: len(r["completion_ids"]))
    assert rows[0]["completion_ids"] == [10, 11, eos] and rows[0]["step_map"] == [1, 0, 2]
    assert rows[1]["completion_ids"] == list(range(12, 20)) and rows[1]["step_map"] == list(range(8))
    assert dataset_metadata(ds)["num_without_eos"] == 1


def test_bidirectional_default_keeps_the_whole_canvas(model, tok):
    """A bidirectional teacher's trajectory covers every canvas position (trailing EOS included), each with its step,
    so the training states are exactly the decoder's canvases (same length, early-committed EOS kept)."""
    config = gen_config(tok)
    ds = collect_trajectories(model, tok, conversational(), config, batch_size=3, show_progress=False)
    assert dataset_metadata(ds)["generation_config"]["stop_at_eos"] is False
    full = DiffusionGenerationConfig(**{**config.to_diff_dict(), "stop_at_eos": False})
    for row in ds:
        assert len(row["completion_ids"]) == 8 and sorted(row["step_map"]) == list(range(8))
        out = generation.diffusion_generate(
            model,
            torch.tensor([row["prompt_ids"]]),
            generation_config=full,
            processing_class=tok,
            return_dict_in_generate=True,
            output_step_map=True,
        )
        assert row["completion_ids"] == out.sequences[0, len(row["prompt_ids"]) :].tolist()
        assert row["step_map"] == out.step_map[0].tolist()


def test_metadata_and_save_to_disk(model, tok, tmp_path):
    config = gen_config(tok, max_new_tokens=4)
    ds = collect_trajectories(
        model,
        tok,
        conversational(PROMPTS[:2]),
        config,
        teacher_name="org/teacher",
        teacher_revision="abc123",
        dataset_name="org/prompts",
        show_progress=False,
    )
    meta = dataset_metadata(ds)
    assert meta["teacher"] == "org/teacher" and meta["teacher_revision"] == "abc123"
    assert meta["dataset_name"] == "org/prompts" and meta["adapter"] == "generic"
    assert meta["generation_config"]["max_new_tokens"] == 4 and meta["generation_config"]["block_length"] == 4
    assert meta["block_length"] == 4 and meta["mask_token_id"] == tok.mask_token_id
    assert meta["num_trajectories"] == 2 and meta["trl_t3d_version"]
    assert datetime.datetime.fromisoformat(meta["date"]).tzinfo is not None
    ds.save_to_disk(str(tmp_path / "saved"))
    reloaded = datasets.load_from_disk(str(tmp_path / "saved"))
    assert dataset_metadata(reloaded) == meta and reloaded[:] == ds[:]


def test_prompt_rendering_messages_strings_suffix(tok):
    suffix = " Think."
    conv = [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "the answer"}]
    ids, text = render_prompt(conv, tok, source_column="messages", reasoning_suffix=suffix)
    assert text == "<|user|>q? Think.<|assistant|>"  # the reference answer is not part of the prompt
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    _, text = render_prompt("q?", tok)  # plain strings are used as they are, like TRL
    assert text == "q?"
    _, text = render_prompt("q?", tok, apply_chat_template=True, reasoning_suffix=suffix)
    assert text == "<|user|>q? Think.<|assistant|>"
    ids, text = render_prompt([5, 6, 7], tok, source_column="prompt_ids")
    assert ids == [5, 6, 7] and text is None
    with pytest.raises(ValueError, match="string or a list"):
        render_prompt(3, tok)


def test_messages_column_and_kept_columns(model, tok):
    ds = datasets.Dataset.from_dict(
        {
            "messages": [[{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}]],
            "answer": ["4"],
        }
    )
    out = collect_trajectories(
        model, tok, ds, gen_config(tok, max_new_tokens=4), keep_columns=["answer"], show_progress=False
    )
    assert out[0]["prompt"] == "<|user|>2+2<|assistant|>" and out[0]["answer"] == "4"


def test_dataset_without_prompt_column_names_the_columns_found(model, tok):
    ds = datasets.Dataset.from_dict({"question": ["a"], "answer": ["b"]})
    with pytest.raises(ValueError, match=r"found \['answer', 'question'\].*prompt_column"):
        collect_trajectories(model, tok, ds, gen_config(tok), show_progress=False)
    # ... and naming the right column fixes it
    out = collect_trajectories(
        model, tok, ds, gen_config(tok, max_new_tokens=4), prompt_column="question", show_progress=False
    )
    assert out[0]["prompt"] == "a"


def test_missing_mask_token_is_a_clear_error():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "a": 2, "b": 3}
    no_mask_tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>")),
        pad_token="<pad>",
        eos_token="<eos>",
    )
    model = testing.tiny_llama(4, is_causal=False)
    with pytest.raises(ValueError, match="No mask token.*mask_token_id"):
        collect_trajectories(
            model,
            no_mask_tok,
            datasets.Dataset.from_dict({"prompt": ["ab"]}),
            DiffusionGenerationConfig(max_new_tokens=4, block_length=4),
            adapter="generic",
            show_progress=False,
        )


class Interrupted(RuntimeError):
    pass


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_resume_after_interruption_gives_the_same_dataset(model, tok, tmp_path, monkeypatch, temperature):
    """Sampling too: each shard's generator is seeded with seed + shard index."""
    import trl_t3d.collect as collect_module

    config = gen_config(tok, temperature=temperature)
    prompts = conversational()
    kwargs = dict(batch_size=2, shard_size=3, teacher_name="t", show_progress=False)
    full = collect_trajectories(model, tok, prompts, config, output_dir=str(tmp_path / "full"), **kwargs)

    write_shard = collect_module._write_shard
    calls = []

    def write_then_die(rows, path):
        if calls:
            raise Interrupted("killed after the first shard")
        calls.append(path)
        write_shard(rows, path)

    monkeypatch.setattr(collect_module, "_write_shard", write_then_die)
    out_dir = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        collect_trajectories(model, tok, prompts, config, output_dir=str(out_dir), **kwargs)
    assert sorted(p for p in os.listdir(out_dir) if p.startswith("shard-")) == ["shard-00000-of-00003.parquet"]
    monkeypatch.setattr(collect_module, "_write_shard", write_shard)

    decoded = []
    real_generate = generation.diffusion_generate

    def counting_generate(model, input_ids, *args, **kw):
        decoded.append(input_ids.shape[0])
        return real_generate(model, input_ids, *args, **kw)

    monkeypatch.setattr(generation, "diffusion_generate", counting_generate)
    resumed = collect_trajectories(model, tok, prompts, config, output_dir=str(out_dir), **kwargs)
    assert sum(decoded) == len(PROMPTS) - 3  # the finished shard was not decoded again
    assert resumed[:] == full[:]
    strip = lambda m: {k: v for k, v in m.items() if k != "date"}  # noqa: E731
    assert strip(dataset_metadata(resumed)) == strip(dataset_metadata(full))


def test_resume_refuses_shards_of_another_collection(model, tok, tmp_path):
    kwargs = dict(output_dir=str(tmp_path), shard_size=4, show_progress=False)
    collect_trajectories(model, tok, conversational(PROMPTS[:2]), gen_config(tok, max_new_tokens=4), **kwargs)
    with pytest.raises(ValueError, match="different collection"):
        collect_trajectories(model, tok, conversational(PROMPTS[:2]), gen_config(tok, max_new_tokens=8), **kwargs)
    # resume=False starts over
    out = collect_trajectories(
        model, tok, conversational(PROMPTS[:2]), gen_config(tok, max_new_tokens=8), resume=False, **kwargs
    )
    assert dataset_metadata(out)["max_new_tokens"] == 8


def test_dataset_card_and_push_to_hub_mocked(model, tok, monkeypatch):
    """The dataset repo gets parquet data, a dataset card and the metadata; the network call is replaced."""
    from huggingface_hub import HfApi

    from trl_t3d.hub import push_trajectories_to_hub, trajectory_dataset_card

    ds = collect_trajectories(
        model,
        tok,
        conversational(PROMPTS[:3]),
        gen_config(tok),
        teacher_name="org/teacher",
        dataset_name="org/prompts",
        show_progress=False,
    )
    card = trajectory_dataset_card(ds, "me/traj", license="mit")
    assert card.startswith("---\nlicense: mit\n") and "path: data/train-*" in card
    assert "org/teacher" in card and "org/prompts" in card and "Trajectories: 3" in card

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, folder_path, repo_id, repo_type, commit_message, **kw):
        files = sorted(
            os.path.relpath(os.path.join(r, f), folder_path) for r, _, fs in os.walk(folder_path) for f in fs
        )
        uploaded = datasets.Dataset.from_parquet(os.path.join(folder_path, "data/train-00000-of-00001.parquet"))
        with open(os.path.join(folder_path, "README.md")) as f:
            readme = f.read()
        with open(os.path.join(folder_path, "trajectory_metadata.json")) as f:
            meta = json.load(f)
        calls.append(("upload_folder", repo_id, repo_type, files, uploaded[:], readme, meta))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert push_trajectories_to_hub(ds, "me/traj", private=True, license="mit") == "commit-info"
    assert calls[0] == ("create_repo", "me/traj", {"repo_type": "dataset", "private": True, "exist_ok": True})
    _, repo_id, repo_type, files, rows, readme, meta = calls[1]
    assert (repo_id, repo_type) == ("me/traj", "dataset")
    assert files == ["README.md", "data/train-00000-of-00001.parquet", "trajectory_metadata.json"]
    assert rows == ds[:] and readme == card and meta == dataset_metadata(ds)


def test_collection_at_high_temperature_never_commits_the_mask(tok):
    """T3D's recipes sample the teacher at 0.1; at any temperature the mask token is never a committed word, even
    for a model that finds it the likeliest one (before, collection died with "the trajectory is incomplete")."""
    model = testing.make_generic_mlm(tok)

    def prefer_the_mask(module, inputs, output):
        output = output.clone()
        output[..., tok.mask_token_id] += 1000.0
        return output

    handle = model.lm_head.register_forward_hook(prefer_the_mask)
    prompts = datasets.Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(8)]})
    try:
        out = collect_trajectories(
            model, tok, prompts, gen_config(tok, max_new_tokens=8, temperature=100.0), show_progress=False
        )
    finally:
        handle.remove()
    assert len(out) == 8 and all(len(ids) == 8 for ids in out["completion_ids"])
    assert not any(tok.mask_token_id in ids for ids in out["completion_ids"])


def test_block_causal_collection_records_the_block_the_decoder_used(tok):
    """Issue 20.1: without `block_length`, SDAR decodes with its trained `config.block_size`; the trajectories (column,
    metadata, fingerprinted settings) must record that block, not `max_new_tokens`."""
    sdar = testing.make_sdar(tok)
    sdar.config.block_size = 4
    config = DiffusionGenerationConfig(max_new_tokens=8, tokens_per_step=1, mask_token_id=tok.mask_token_id)
    dataset = datasets.Dataset.from_dict({"prompt": ["1+1=", "hi"]})
    ds = collect_trajectories(sdar, tok, dataset, config, show_progress=False)
    meta = dataset_metadata(ds)
    assert ds["block_length"] == [4, 4]
    assert meta["block_length"] == 4
    assert meta["generation_config"]["block_length"] == 4
    explicit = collect_trajectories(sdar, tok, dataset, gen_config(tok, block_length=4), show_progress=False)
    assert ds["completion_ids"] == explicit["completion_ids"] and ds["step_map"] == explicit["step_map"]


class ThreadProcess:
    """One of `num_processes` "processes" of a collection, run as threads of this test: the `PartialState` fields
    collection reads, with `wait_for_everyone` a barrier shared by all of them."""

    def __init__(self, process_index: int, num_processes: int, barrier):
        self.process_index, self.num_processes, self.barrier = process_index, num_processes, barrier
        self.is_main_process = self.is_local_main_process = process_index == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self):
        self.barrier.wait()


def test_no_process_loses_a_shard_the_main_process_clears(model, tok, tmp_path, monkeypatch):
    """`collect_or_reuse` under 2 processes: the main process merges the shards and deletes them, so it must wait
    until every process has read them. Here process 1 reads late (as a loaded machine may make it), which failed
    with 'Shard ... is missing after every process finished' in 2-process `accelerate launch` runs before."""
    import threading
    import time

    import trl_t3d.collect as collect_module
    from trl_t3d.collect import collect_or_reuse

    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]  # token ids: no tokenizer call inside the threads
    prompts = datasets.Dataset.from_dict({"prompt_ids": prompt_ids})
    read_shard = collect_module._read_shard

    def read_late_on_process_1(path):
        if threading.current_thread().name == "process-1":
            time.sleep(0.5)
        return read_shard(path)

    monkeypatch.setattr(collect_module, "_read_shard", read_late_on_process_1)
    barrier = threading.Barrier(2, timeout=60)
    results, errors = {}, {}

    def run(index):
        try:
            results[index] = collect_or_reuse(
                model, tok, prompts, gen_config(tok), cache_dir=str(tmp_path / "cache"), shard_size=2,
                show_progress=False, teacher_name="t", accelerator=ThreadProcess(index, 2, barrier),
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors[index] = error
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,), name=f"process-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert results[0][:] == results[1][:] and results[0]["prompt_ids"] == prompt_ids
    assert not os.path.exists(tmp_path / "cache" / "shards")  # merged into the cache, then cleared
