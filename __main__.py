"""Command line: ``lora-lab <command>`` or ``python -m lora_lab <command>``.

Every command exits with the statuses of lora_core/exit_status.py (usage errors: argparse's own 2, "refused").
"""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-lab", description="Train, convert, inspect, merge, resize and bake "
                                     "LoRAs. Exit status: 0 done, 1 failed while working, 2 refused (nothing "
                                     "written), 3 written but incomplete, 130 interrupted.")
    commands = parser.add_subparsers(dest="command", required=True)

    from .lora_core.cli import demo

    demo.add_arguments(commands.add_parser("demo", help="train the bundled tiny example end to end on the CPU"))

    from .converters.trained_lora import FORMS
    from .lora_core.cli import train as train_cli

    train_cli.add_arguments(commands.add_parser("train", help="train a LoRA on a local diffusers model (TOML config; "
                                                "torchrun / accelerate launch for several processes)"), FORMS)

    from .lora_core.cli import cache as cache_cli

    cache_cli.add_arguments(commands.add_parser("cache", help="report the size of an encoding cache folder, or clear it"))

    from .converters import cli as convert_cli

    convert_cli.add_convert_arguments(commands.add_parser("convert", help="convert a LoRA between formats"))
    convert_cli.add_inspect_arguments(commands.add_parser("inspect", help="describe a LoRA file"))
    convert_cli.add_merge_arguments(commands.add_parser("merge", help="merge LoRAs into one (exact, or SVD to a rank)"))
    convert_cli.add_resize_arguments(commands.add_parser("resize", help="re-rank a LoRA by SVD (fixed or dynamic)"))
    convert_cli.add_bake_arguments(commands.add_parser("bake", help="apply LoRAs to a model file at given strengths"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:  # writes are atomic: an interrupted one leaves no partial file
        from .lora_core.exit_status import EXIT_INTERRUPTED

        print(f"lora-lab {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
