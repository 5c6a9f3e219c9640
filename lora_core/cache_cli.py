"""`lora-lab cache FOLDER [--clear]`: how much an encoding cache folder holds, and emptying it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .encoding_cache import cache_usage, clear_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="the cache folder (the dataset node's cache_folder)")
    parser.add_argument("--clear", action="store_true", help="delete the cached encodings (nothing else in the folder)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        print(f"lora-lab cache: error: {args.folder} is not a folder")
        return 2
    if args.clear:
        print(f"cleared {clear_cache(args.folder)}")
    else:
        print(cache_usage(args.folder))
    return 0
