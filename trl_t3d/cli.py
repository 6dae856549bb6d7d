"""The `trl-t3d` command line: `collect`, `distill` and `eval`, each on TRL's `TrlParser`.

Every command takes `--config recipe.yaml` (values of any of its dataclasses) and command-line overrides, which win
over the recipe. A key that no dataclass of the command knows is an error, in the recipe as on the command line.

    trl-t3d collect --config recipes/llada/t3d/collect.yaml --output_dir trajectories
    trl-t3d distill --config recipes/sdar/t3d/config_full.yaml --learning_rate 2e-5
    trl-t3d eval --model_name_or_path student --task arithmetic --tokens_per_step 1 2 4
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m trl_t3d.cli distill --config ...
"""

from __future__ import annotations

import importlib
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    listing = "\n".join(f"  {name:<9}{help_}" for name, (_, help_) in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE % listing)
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

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
