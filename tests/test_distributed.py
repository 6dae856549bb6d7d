"""Scale-out on CPU: `accelerate launch` with 2 processes (gloo) under DDP, FSDP2 and DeepSpeed ZeRO-2/3.

Each launch runs `tests/distributed/checks.py` with our own accelerate recipes (`recipes/accelerate_configs/`,
overridden to 2 processes and fp32) and several cases at once (one launch costs 30-60 s): LLaDA (bidirectional), SDAR
(block-causal) and DiffusionGemma, full fine-tuning and LoRA, random states (the default mask ratios, random tokens) and
a reference synced every 2 steps. Each case must match a 1-process run of the same global batch in this process:
the same states (by state key), losses and weights to fp32 rounding, and a frozen reference equal to the policy of the
last round boundary. The DDP launch also collects trajectories, interrupted after each process's first shard and
resumed, and must give the 1-process dataset.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate_configs"
SCRIPT = ROOT / "tests" / "distributed" / "checks.py"
PROMPTS = ["1+1=", "2+3=?", "hello", "abc"]
GENERATION = {"max_new_tokens": 8, "block_length": 4, "tokens_per_step": 1, "temperature": 0.7}

spec = importlib.util.spec_from_file_location("distributed_checks", SCRIPT)
checks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(checks)


@pytest.fixture(scope="module")
def diffusion_gemma_dir(tmp_path_factory):
    from trl_t3d import testing

    return testing.save_diffusion_gemma(str(tmp_path_factory.mktemp("diffusion_gemma")), canvas_length=4)


@pytest.fixture(scope="module")
def cases(llada_dir, sdar_dir, diffusion_gemma_dir):
    """Every case trains 3 steps of 2 x 2 examples over 8 rows (step 3 is in epoch 1), syncing the reference at 2."""
    dirs = {"llada": llada_dir, "sdar": sdar_dir, "dg": diffusion_gemma_dir}
    return [
        {"name": f"{family}_{mode}", "model_dir": path, "peft": mode == "lora", "ref_sync_steps": 2}
        for family, path in dirs.items()
        for mode in ("full", "lora")
    ]


# DiffusionGemma shares its weights between encoder and decoder; FSDP cannot restore those from rank 0 alone.
DG_FSDP_ENV = {"FSDP_CPU_RAM_EFFICIENT_LOADING": "false"}


@pytest.fixture(scope="module")
def single_process(cases, tmp_path_factory):
    """The same cases on 1 process with twice the batch (the same global batch), in this process."""
    out, results = tmp_path_factory.mktemp("single"), {}
    for case in cases + extra_cases(cases):
        trainer = checks.build_trainer(case, str(out / case["name"]), 2 * case.get("per_device_train_batch_size", 2))
        trainer.train()
        results[case["name"]] = {**checks.trained_weights(trainer), "states": {0: trainer.data_collator.batches}}
    return results


def keyed_noise_case(cases):
    """The default objective with every random draw of its own: fake tokens and the mean-field fill at temperature 1,
    4 queries in blocks of 8 (so the query order matters). Each draw is keyed by its example: 2 processes train the
    numbers of 1 (a per-rank generator left them 2.8e-3 apart)."""
    return {
        **cases[0],
        "name": "keyed_noise",
        "rows": {"block_length": 8, "completion_length": 16},
        "reference_temperature": 1.0,
        "mean_field_temperature": 1.0,
    }


def recollect_case(cases):
    """Prompts only, fresh trajectories from the reference each round (sync at 2): 8 prompts are one collection shard,
    which rank 0 decodes while rank 1 holds none; under a sharded reference the ranks run their forwards in lockstep
    (else rank 0's all-gathers wait for rank 1 forever)."""
    return {**cases[0], "name": "recollect", "prompts": ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]}


def extra_cases(cases):
    return [identical_rows_case(cases), keyed_noise_case(cases), recollect_case(cases)]


def identical_rows_case(cases):
    """Eight copies of one row: ranks draw their own states, so their copies must differ (the old collator's one
    generator, seeded alike on every rank, gave every rank the same states). Uniform mask ratios: 4 to draw from."""
    return {**cases[0], "name": "identical_rows", "rows": {"identical": True}, "mask_ratio_exponent": 0.0}


def launch(config: Path, spec: dict, tmp_path: Path, timeout: int = 240, env: dict | None = None) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({**spec, "out": str(out)}))
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate), "launch", "--config_file", str(config), "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(spec_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    if result.returncode != 0:
        (tmp_path / "stderr.txt").write_text(result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"{config.name}: {time.perf_counter() - start:.0f} s")
    return out


def states_by_key(result) -> dict:
    return {
        key: xt
        for batches in result["states"].values()
        for batch in batches
        for key, xt in zip(batch["keys"], batch["xt"])
    }


def assert_matches_single_process(out: Path, cases, single) -> None:
    for case in cases:
        name = case["name"]
        dist, ref = torch.load(out / f"{name}.pt", weights_only=False), single[name]
        assert len(dist["states"]) == 2, name  # both ranks trained
        # the same states: every rank's (key -> x_t) is the 1-process run's
        assert states_by_key(dist) == states_by_key(ref), name
        losses = torch.tensor(dist["losses"]), torch.tensor(ref["losses"])
        torch.testing.assert_close(*losses, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        assert dist["policy"].keys() == ref["policy"].keys()
        for key, value in dist["policy"].items():
            torch.testing.assert_close(value, ref["policy"][key], rtol=0, atol=2e-5, msg=f"{name}: {key}")
        # the reference: synced at step 2 (an earlier policy than the final one), frozen, equal to the 1-process one
        assert dist["reference"] and dist["reference"].keys() == ref["reference"].keys()
        assert not any(dist["reference_requires_grad"]), name
        for key, value in dist["reference"].items():
            torch.testing.assert_close(value, ref["reference"][key], rtol=0, atol=2e-5, msg=f"{name}: {key}")


@pytest.mark.accelerate_launch
def test_ddp_matches_one_process_and_collects_sharded(cases, single_process, llada_dir, tmp_path):
    from datasets import Dataset, load_from_disk

    from trl_t3d.collect import collect_trajectories
    from trl_t3d.generation import DiffusionGenerationConfig
    from trl_t3d.resolved import load_tokenizer
    from trl_t3d.scripts.utils import load_diffusion_model

    collect = {"model_dir": llada_dir, "prompts": PROMPTS, "generation": GENERATION}
    out = launch(CONFIGS / "multi_gpu.yaml", {"cases": cases + extra_cases(cases), "collect": collect}, tmp_path)
    setup = json.loads((out / "setup.json").read_text())
    assert {s["wrapped"] for s in setup.values()} == {"DistributedDataParallel"}
    assert_matches_single_process(out, cases + extra_cases(cases), single_process)

    # ranks draw their own states: identical rows, different states on the two ranks
    identical = torch.load(out / "identical_rows.pt", weights_only=False)["states"]
    rank_states = [[batch["xt"] for batch in identical[rank]] for rank in (0, 1)]
    assert rank_states[0] != rank_states[1]

    # the sharded, interrupted and resumed collection equals a 1-process one; each process decoded each shard once
    counts = json.loads((out / "collect.json").read_text())
    assert counts == {"0": {"first": 1, "resumed": 1}, "1": {"first": 1, "resumed": 1}}
    model = load_diffusion_model(llada_dir, trust_remote_code=True)
    expected = collect_trajectories(
        model,
        load_tokenizer(llada_dir, trust_remote_code=True),
        Dataset.from_dict({"prompt": PROMPTS}),
        DiffusionGenerationConfig(**GENERATION),
        batch_size=2,
        shard_size=1,
        show_progress=False,
        seed=0,
    )
    collected = load_from_disk(str(out / "collected"))
    columns = ["prompt_ids", "completion_ids", "step_map"]
    assert [tuple(map(tuple, r)) for r in zip(*(collected[c] for c in columns))] == [
        tuple(map(tuple, r)) for r in zip(*(expected[c] for c in columns))
    ]


@pytest.mark.accelerate_launch
def test_fsdp2_matches_one_process(cases, single_process, tmp_path):
    """`recipes/accelerate_configs/fsdp.yaml` (FSDP2, `fully_shard`): the policy and the frozen reference are sharded
    (DTensor parameters), and the reference sync copies between shards."""
    fsdp_cases = [{**c, "env": DG_FSDP_ENV} if c["name"].startswith("dg") else c for c in cases]
    # uniform mask ratios: the ranks' blocks hold different numbers of masked positions, yet every rank must run as
    # many mean-field queries through the sharded reference (else the all-gathers of the shorter rank hang)
    uneven = identical_rows_case(cases)
    refused = {**cases[-1], "name": "dg_refused", "expect_error": True}  # the recipe as is: a clear error
    # resumed from checkpoint 3 (between the syncs at 2 and 4; sharded checkpoints, fake tokens at temperature 1)
    resumed = [
        {**case, "name": f"{case['name']}_resumed", "max_steps": 4, "save_steps": 3, "reference_temperature": 1.0}
        for case in cases[:2]
    ]
    noise, recollect = keyed_noise_case(cases), recollect_case(cases)
    out = launch(
        CONFIGS / "fsdp.yaml", {"cases": fsdp_cases + [uneven, noise, recollect, refused] + resumed}, tmp_path
    )
    setup = json.loads((out / "setup.json").read_text())
    assert "fsdp_cpu_ram_efficient_loading: false" in setup.pop("dg_refused")["error"]
    for name, s in setup.items():
        assert s["distributed_type"] == "DistributedType.FSDP" and s["fsdp_version"] == 2, (name, s)
        assert s["policy_fully_sharded"] and s["policy_dtensor"] and s["reference_dtensor"], (name, s)
    assert_matches_single_process(out, cases + [uneven, noise, recollect], single_process)
    for case in resumed:
        run = torch.load(out / f"{case['name']}.pt", weights_only=False)
        expected = run["uninterrupted"]
        assert "t3d_reference.safetensors" in run["checkpoint_files"]
        assert not [name for name in run["checkpoint_files"] if name.startswith("t3d_rng_state")]
        assert len(run["losses"]) == 4 and run["losses"] == expected["losses"], case["name"]
        for part in ("policy", "reference"):
            for key, value in run[part].items():
                torch.testing.assert_close(value, expected[part][key], rtol=0, atol=0, msg=f"{case['name']}: {key}")


@pytest.mark.accelerate_launch
@pytest.mark.deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_matches_one_process(stage, cases, single_process, tmp_path):
    """`recipes/accelerate_configs/zero{2,3}.yaml` on DeepSpeed's CPU accelerator (`make test-distributed`)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: `make test-distributed` installs it")
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")}  # nothing is built; never in ~/.cache
    out = launch(CONFIGS / f"zero{stage}.yaml", {"cases": cases}, tmp_path, timeout=400, env=env)
    setup = json.loads((out / "setup.json").read_text())
    for name, s in setup.items():
        assert s["distributed_type"] == "DistributedType.DEEPSPEED" and s["zero_stage"] == stage, (name, s)
        assert s["zero3_partitioned"] == (stage == 3), (name, s)
    assert_matches_single_process(out, cases, single_process)
