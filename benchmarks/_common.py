"""Helpers several benchmarks share. Each benchmark puts this directory on `sys.path` (it is already there when the
benchmark runs as a script) and imports this module as `_common`."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import torch


def platform_info() -> dict:
    """What a result file records about the machine: torch version, CPU threads, architecture."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}


def write_payload(path: str, payload: dict, **dump_kwargs) -> None:
    """`payload` as indented JSON at `path`, its folder made first."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, **dump_kwargs)


def finish_run(path: str, payload: dict, start: float, **dump_kwargs) -> dict:
    """Add the run's total time (since `start`, a `time.perf_counter()`) and `platform_info()` to `payload`, write it
    to `path` (`write_payload`) and say so; returns the payload."""
    payload |= {"total_time_s": time.perf_counter() - start, "platform": platform_info()}
    write_payload(path, payload, **dump_kwargs)
    print(f"Wrote {path} ({payload['total_time_s']:.0f} s)")
    return payload


def peak_bytes(fn, device) -> int:
    """Peak memory `fn()` allocates above what was live before: the CUDA allocator's own statistics on a GPU, else the
    peak of live CPU-allocator bytes from the profiler's per-allocation `[memory]` events."""
    if device.type == "cuda":  # on GPU the caching allocator keeps exact stats
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    events = [
        e["args"] for e in trace["traceEvents"] if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    ]
    events.sort(key=lambda a: a["Ev Idx"])
    live = peak = 0
    for a in events:
        live += a["Bytes"]
        peak = max(peak, live)
    return peak


def collect_toy_trajectories(teacher, tokenizer, tasks, config_of, batch_size: int = 256):
    """The toy teacher's trajectories on the prompts of each of `tasks` (an iterable, consumed one task at a time),
    concatenated in task order; `config_of(task)` is the task's `DiffusionGenerationConfig`."""
    from datasets import Dataset, concatenate_datasets

    from trl_t3d import collect_trajectories

    parts = []
    for task in tasks:
        prompts = Dataset.from_dict({"prompt_ids": task.prompt_ids(tokenizer)})
        parts.append(
            collect_trajectories(
                teacher,
                tokenizer,
                prompts,
                config_of(task),
                batch_size=batch_size,
                prompt_column="prompt_ids",
                teacher_name="toy-teacher",
                show_progress=False,
            )
        )
    return concatenate_datasets(parts)
