"""Command line: ``lora-lab <command>`` or ``python -m lora_lab <command>``."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-lab", description="Train, convert and inspect LoRAs.")
    commands = parser.add_subparsers(dest="command", required=True)

    from .lora_core import demo

    demo.add_arguments(commands.add_parser("demo", help="train the bundled tiny example end to end on the CPU"))

    from .lora_core import cache_cli

    cache_cli.add_arguments(commands.add_parser("cache", help="report the size of an encoding cache folder, or clear it"))

    from .converters import cli as convert_cli

    convert_cli.add_convert_arguments(commands.add_parser("convert", help="convert a LoRA between formats"))
    convert_cli.add_inspect_arguments(commands.add_parser("inspect", help="describe a LoRA file"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
