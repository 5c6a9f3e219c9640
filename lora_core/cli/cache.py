"""`lora-lab cache FOLDER [--clear]`: how much an encoding cache folder holds, and emptying it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cache.encoding_cache import cache_usage, clear_cache
from ..errors import DatasetError
from ..exit_status import EXIT_FAILED, EXIT_OK, EXIT_REFUSED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="the cache folder (the dataset node's cache_folder)")
    parser.add_argument("--clear", action="store_true", help="delete the cached encodings: only files the cache can prove "
                        "it wrote (its tag on the folder, its header in each file); anything else is left and listed")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        print(f"lora-lab cache: error: {args.folder} is not a folder", file=sys.stderr)
        return EXIT_REFUSED
    try:
        print(f"cleared {clear_cache(args.folder)}" if args.clear else cache_usage(args.folder))
    except DatasetError as e:  # not a folder the cache made: nothing was deleted
        print(f"lora-lab cache: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as e:  # a file another program holds, permissions
        print(f"lora-lab cache: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
