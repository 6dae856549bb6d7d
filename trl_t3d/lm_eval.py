"""`python -m trl_t3d.lm_eval`: lm-evaluation-harness's command line with the `diffusion_lm` model registered.

lm-eval (0.4.13) has no plugin discovery for models, so `lm_eval --model diffusion_lm` cannot find a model that another
package defines; this entry point registers it and hands every argument to lm-eval unchanged:

```bash
python -m trl_t3d.lm_eval --model diffusion_lm --model_args pretrained=DIR,tokens_per_step=4 --tasks gsm8k
accelerate launch -m trl_t3d.lm_eval --model diffusion_lm --model_args pretrained=DIR --tasks gsm8k  # data parallel
```

One difference in cost, none in results: when `--include_path` holds every task of `--tasks`, lm-eval's thousands of
built-in task files are not indexed (5-20 s per process), as `trl-t3d eval` does.
"""

from __future__ import annotations

import argparse
import contextlib


def _requested_tasks(argv: list[str]) -> tuple[list[str], str | None]:
    """The task names and the include path of an lm-eval command line (what lm-eval's own parser reads for them)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--tasks", "-t", default=None)
    parser.add_argument("--include_path", default=None)
    known, _ = parser.parse_known_args(argv)
    tasks = [name for name in (known.tasks or "").split(",") if name]
    return tasks, known.include_path


@contextlib.contextmanager
def index_only_the_include_path(argv: list[str]):
    """While lm-eval runs, a `TaskManager` indexes `--include_path` alone if it holds every requested task; else (or
    with tasks given as files or globs) lm-eval's behaviour is unchanged."""
    import lm_eval.tasks

    tasks, include_path = _requested_tasks(argv)
    original = lm_eval.tasks.TaskManager
    if not tasks or not include_path:
        yield
        return
    known = original(include_path=include_path, include_defaults=False).all_tasks  # cheap: a few files
    if not all(task in known for task in tasks):
        yield
        return

    class IncludePathTaskManager(original):
        def __init__(self, *args, include_defaults: bool = True, **kwargs):
            super().__init__(*args, include_defaults=False, **kwargs)

    lm_eval.tasks.TaskManager = IncludePathTaskManager
    try:
        yield
    finally:
        lm_eval.tasks.TaskManager = original


def main() -> None:
    import sys

    from lm_eval.__main__ import cli_evaluate

    from trl_t3d.evaluation.lm_eval import model  # noqa: F401  (registers `diffusion_lm`)

    with index_only_the_include_path(sys.argv[1:]):
        cli_evaluate()
    _close_process_group()


def _close_process_group() -> None:
    """Under `accelerate launch`, wait for every rank, then close the process group before the interpreter exits.

    lm-eval leaves it open; a rank that exits while rank 0 still writes results can then abort in torch's teardown
    ("terminate called without an active exception", SIGABRT), failing a run whose results were complete."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
