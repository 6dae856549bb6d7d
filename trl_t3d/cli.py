"""The `trl-t3d` command line: `collect`, `distill` and `eval`, each on TRL's `TrlParser`.

Every command takes `--config recipe.yaml` (values of any of its dataclasses) and command-line overrides, which win
over the recipe. A key that no dataclass of the command knows is an error, in the recipe as on the command line, with
a "did you mean"; flags are never matched by prefix. `collect` also reads a distill recipe (its teacher settings).

    trl-t3d collect --config recipes/llada/t3d/config_lora.yaml --output_dir trajectories  # a distill recipe's teacher
    trl-t3d distill --config recipes/sdar/t3d/config_full.yaml --learning_rate 2e-5
    trl-t3d eval --model_name_or_path student --task arithmetic --tokens_per_step 1 2 4
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m trl_t3d.cli distill --config ...
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "collect": ("trl_t3d.scripts.collect", "Collect decoding trajectories (tokens + step map) from a diffusion LM."),
    "distill": ("trl_t3d.scripts.distill", "Distill a few-step student with T3D: trajectories + DDO training."),
    "eval": ("trl_t3d.scripts.evaluate", "Accuracy and speed per tokens-per-step: JSON report + PNG frontier plot."),
}

USAGE = """usage: trl-t3d {collect,distill,eval} [--config recipe.yaml] [--<argument> <value> ...]

Few-step diffusion LLMs by trajectory self-distillation with DDO (T3D), on TRL.

commands:
%s

Run `trl-t3d <command> --help` for the arguments of a command. Recipes: `recipes/<model>/t3d/*.yaml`.
Multi-GPU: `accelerate launch [--config_file recipes/accelerate_configs/zero2.yaml] -m trl_t3d.cli <command> ...`.
"""


def make_parser(command: str):
    """The `TrlParser` of one command (its own parser, so a recipe key of another command is an error)."""
    if command not in COMMANDS:
        raise ValueError(f"Unknown command '{command}'. Commands: {', '.join(COMMANDS)}.")
    module = importlib.import_module(COMMANDS[command][0])
    return module.make_parser(prog=f"trl-t3d {command}")


def parse_args(command: str, argv: list[str]):
    """Parse a command's arguments (recipe + overrides) into its dataclasses."""
    from .scripts.utils import parse_command_line

    return parse_command_line(make_parser(command), argv)


def run(command: str, argv: list[str]):
    """Parse and run one command in this process; returns what the script's `main` returns."""
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(*parse_args(command, argv))


QUANTIZATION_FLAGS = ("load_in_4bit", "load_in_8bit")
TRACEBACK_ENV = "TRL_T3D_TRACEBACK"


def asks_for_quantization(argv: list[str]) -> bool:
    """Whether the command line or its `--config` recipe turns on 4-bit / 8-bit loading (bitsandbytes)."""
    from .scripts.utils import _pop_config

    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name.lstrip("-").replace("-", "_") in QUANTIZATION_FLAGS:
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
            if value.lower() not in ("false", "0", "no"):
                return True
    try:
        _, recipe = _pop_config(argv)
        if recipe is not None:
            import yaml

            with open(recipe) as f:
                config = yaml.safe_load(f) or {}
            return isinstance(config, dict) and any(bool(config.get(flag)) for flag in QUANTIZATION_FLAGS)
    except (OSError, ValueError, ImportError):
        return False  # the parser says what is wrong with the recipe
    return False


def _without_bitsandbytes() -> None:
    """Keep bitsandbytes unimported in this process (peft and transformers import it eagerly when it is installed,
    and its import fetches kernels and warns, even for `--help`). Only for a command that asks for no quantization."""
    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = (
            None  # `find_spec` says "not installed"; `import bitsandbytes` raises ImportError
        )


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that report a wrong input (a flag, a path, a recipe, the network), not a bug of trl-t3d."""
    return (ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    """The `trl-t3d` command. From the command line (`argv` None), a wrong input prints its message, not a traceback
    (set `TRL_T3D_TRACEBACK=1` to see it), and returns 1; called with `argv` (Python, tests), errors are raised."""
    if argv is None:
        argv = list(sys.argv[1:])
        if not asks_for_quantization(argv):
            _without_bitsandbytes()
        try:
            return _main(argv)
        except _user_error_types() as err:
            if os.environ.get(TRACEBACK_ENV, "").lower() not in ("", "0", "false"):
                raise
            command = argv[0] if argv and argv[0] in COMMANDS else None
            print(f"trl-t3d{' ' + command if command else ''}: error: {err}", file=sys.stderr)
            return 1
    return _main(list(argv))


def _main(argv: list[str]) -> int:
    listing = "\n".join(f"  {name:<9}{help_}" for name, (_, help_) in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE % listing)
        return 0
    if argv[0] in ("-V", "--version"):
        from .version import __version__

        print(f"trl-t3d {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(USAGE % listing, file=sys.stderr)
        print(f"trl-t3d: error: unknown command '{command}' (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    run(command, argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
