"""`evaluate_few_step`: accuracy and speed of a diffusion LM at several tokens-per-step budgets.

For each budget the same prompts are decoded with the same settings except `tokens_per_step`, and the report gives:

- `accuracy`: share of completions the task's verifier accepts;
- `nfe`: forward passes per sample, the mean over samples of the number of denoising passes that committed at least
  one of its tokens until it stopped, what it pays decoded alone (a sample that stopped at EOS does not pay for its
  batch mates; a pass that committed only positions after its EOS, which become padding, counts;
  `DiffusionGenerateOutput.nfe_per_sample`); `nfe_per_batch` is the decoder's own count, per batch;
- `tokens_per_forward`: kept tokens (up to EOS) per forward pass and sample (total kept / total per-sample NFE,
  `generation.speed.tokens_per_forward`), the parallelism "TPF" AUP is measured with;
- `wall_time_s` and `samples_per_s` (decoding only; hardware dependent, unlike NFE and TPF).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence

from ..generation.batch import completion_text as _completion_text  # noqa: F401  (benchmarks/objective_protocol.py)
from .tasks import Task

logger = logging.getLogger(__name__)

REPORT_NAME = "few_step_eval.json"
PLOT_NAME = "few_step_eval.png"
PER_BUDGET = ("tokens_per_step", "steps")  # decoding fields set per budget: in each result, not the report's settings


def _base_config(model, task: Task, generation_config, overrides: dict):
    """The base decoding settings: `generation_config` (or the model's), task defaults, then explicit overrides."""
    from ..generation import DiffusionGenerationConfig
    from ..generation.decode import resolve_generation_config

    if generation_config is None:
        generation_config = getattr(model, "diffusion_generation_config", None)
    if generation_config is None:
        generation_config = DiffusionGenerationConfig(
            max_new_tokens=task.max_new_tokens or 128, block_length=task.block_length
        )
    config = resolve_generation_config(model, generation_config, {k: v for k, v in overrides.items() if v is not None})
    config.steps = None
    config.return_dict_in_generate = True
    config.output_step_map = True
    return config


def evaluate_few_step(
    model,
    processing_class,
    task: Task,
    tokens_per_step: Sequence[int] = (1, 2, 4, 8),
    *,
    generation_config=None,
    batch_size: int = 32,
    adapter=None,
    output_dir: str | None = None,
    model_name: str | None = None,
    max_new_tokens: int | None = None,
    block_length: int | None = None,
    temperature: float | None = None,
    remasking: str | None = None,
    cache: str | None = None,
    cache_refresh_interval: int | None = None,
    apply_chat_template: bool | None = None,
    num_examples: int | None = None,
    seed: int = 0,
    num_samples_logged: int = 4,
    show_progress: bool = True,
) -> dict:
    """Decode every prompt of `task` at each budget of `tokens_per_step` and score it with the task's verifier.

    Args:
        model: a `DiffusionLM` (`trl_t3d.load_diffusion_lm`; then `processing_class` and `adapter` stay None), or a
            diffusion LM of a family `trl_t3d.adapters` knows (eval mode is set here).
        processing_class: its tokenizer. Prompts are rendered as in collection and training (`apply_chat_template`).
        task (`Task`): prompts, references and verifier.
        tokens_per_step: budgets to compare (each must be <= the block length).
        generation_config: base `DiffusionGenerationConfig` (or dict); defaults to the model's, else the task's
            `max_new_tokens`/`block_length`. `max_new_tokens`, `block_length`, `temperature`, `remasking` override it.
        cache: `"none"`, `"prefix"` or `"dual"`: Fast-dLLM's approximate KV cache (bidirectional families), for
            every budget; overrides the base config's.
        cache_refresh_interval: with `cache`, a full refresh every this many forwards of a block (see
            `DiffusionGenerationConfig`); overrides the base config's.
        batch_size: prompts decoded together (left padded; sorted by length to limit padding).
        adapter: family adapter (name or instance); detected when omitted.
        output_dir: when given, the report is written to `output_dir/few_step_eval.json` and its frontier plot to
            `output_dir/few_step_eval.png`.
        model_name: name of the model in the report (defaults to `config._name_or_path`).
        num_examples: evaluate only the first n prompts.
        seed: seeds sampling (temperature > 0, random remasking, a random canvas): prompt i samples from its own
            generator seeded with `seed + i`, the same at every budget, so its tokens do not depend on `batch_size`
            or on the other prompts.

    Returns:
        dict with `model_name`, `task`, `num_examples`, `generation_config`, `results` (one entry per budget with
        `tokens_per_step`, `accuracy`, `num_correct`, `nfe`, `nfe_per_batch`, `tokens_per_forward`, `wall_time_s`,
        `samples_per_s`, `samples`), and `aup` (d3LLM's accuracy under parallelism, see `report.aup`).
    """
    from ..generation import decode_prompts
    from ..generation.config import decoding_settings
    from ..generation.speed import tokens_per_forward
    from .report import aup_of_report

    if not isinstance(task, Task):
        raise ValueError(
            f"`task` must be a trl_t3d.evaluation.Task, got {type(task).__name__}. Build one with Task(...)."
        )
    budgets = [int(k) for k in tokens_per_step]
    if not budgets or any(k < 1 for k in budgets):
        raise ValueError(f"`tokens_per_step` must be positive ints, got {list(tokens_per_step)}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if num_examples is not None:
        task = task.subset(range(min(num_examples, len(task))))
    if len(task) == 0:
        raise ValueError(f"Task '{task.name}' has no prompts.")
    from ..resolved import DiffusionLM

    inner = model.model if isinstance(model, DiffusionLM) else model
    base = _base_config(
        inner,
        task,
        generation_config,
        dict(
            max_new_tokens=max_new_tokens,
            block_length=block_length,
            temperature=temperature,
            remasking=remasking,
            cache=cache,
            cache_refresh_interval=cache_refresh_interval,
        ),
    )
    too_large = [k for k in budgets if k > base.resolved_block_length]
    if too_large:
        raise ValueError(
            f"tokens_per_step {too_large} exceed block_length={base.resolved_block_length}: a step cannot commit more "
            f"than a block. Use a block_length >= {max(budgets)} or drop those budgets."
        )
    # One resolved model: its special ids and prompt renderer are the ones collection and training use.
    resolved = DiffusionLM.from_model(model, processing_class, adapter=adapter, mask_token_id=base.mask_token_id)
    model, tokenizer = resolved.model, resolved.tokenizer

    model.eval()
    prompts = task.prompt_ids(resolved, apply_chat_template=apply_chat_template)
    model_name = model_name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__

    from tqdm.auto import tqdm

    results = []
    for k in budgets:
        config = copy.deepcopy(base)
        config.tokens_per_step = k
        config.validate()
        with tqdm(
            total=len(prompts), desc=f"{task.name} @ {k} tok/step", disable=not show_progress, leave=False
        ) as progress:
            decoded = decode_prompts(
                model,
                prompts,
                config,
                adapter=resolved.adapter,
                processing_class=tokenizer,
                batch_size=batch_size,
                seeds=[seed + i for i in range(len(prompts))],
                return_text=True,
                progress=progress,
            )
        completions = [out.text for out in decoded]
        batch_nfe = list({out.batch: out.batch_nfe for out in decoded}.values())
        wall = sum(out.seconds for out in decoded)
        correct = [task.verify(completions[i], i) for i in range(len(prompts))]
        result = {
            "tokens_per_step": k,
            "accuracy": sum(correct) / len(correct),
            "num_correct": int(sum(correct)),
            "nfe": sum(out.nfe for out in decoded) / len(prompts),
            "nfe_per_batch": sum(batch_nfe) / len(batch_nfe),
            "tokens_per_forward": tokens_per_forward([out.committed for out in decoded], [out.nfe for out in decoded]),
            "wall_time_s": wall,
            "samples_per_s": len(prompts) / wall if wall > 0 else float("inf"),
            "samples": [
                {"prompt": str(task.prompts[i]), "completion": completions[i], "correct": bool(correct[i])}
                for i in range(min(num_samples_logged, len(prompts)))
            ],
        }
        logger.info(
            "%s | %s | %d tok/step: accuracy %.3f, NFE %.2f, TPF %.2f",
            model_name,
            task.name,
            k,
            result["accuracy"],
            result["nfe"],
            result["tokens_per_forward"],
        )
        results.append(result)

    report = {
        "model_name": str(model_name),
        "task": task.name,
        "num_examples": len(prompts),
        "generation_config": decoding_settings(base, exclude=PER_BUDGET),
        "results": results,
    }
    report["aup"] = aup_of_report(report)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, REPORT_NAME), "w") as f:
            json.dump(report, f, indent=2)
        from .report import plot_frontier

        plot_frontier({report["model_name"]: report}, os.path.join(output_dir, PLOT_NAME))
    return report
