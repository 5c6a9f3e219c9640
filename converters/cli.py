"""`lora-lab convert | inspect | merge | resize | bake`, reporting through one exit-status table.

Exit status (lora_core/exit_status.py, shared by every command): 0 - every key was converted (or dropped by
its nature, with the reason printed); 3 - the output was written but some keys were left unconverted (they
are listed); 2 - refused (bad or unsafe input, output exists, --strict with unconverted keys, keys that fit several
model families that convert them differently - pass --arch -, usage error): nothing written; 1 - an I/O error while working (full disk, a file another program holds): nothing written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from ..lora_core.errors import LoraLabError
from ..lora_core.exit_status import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, EXIT_REFUSED

DTYPE_CHOICES = ("keep", "fp16", "bf16", "fp32")
ARCH_HELP = ("model family, for a file whose keys fit several (the error and `inspect` list the candidates): "
             "sd15, sdxl, sd3, flux, flux2, chroma, sana, wan, hunyuan_video, hunyuan_video15, hunyuan_image21, "
             "qwen_image, lumina2, z_image, krea2, hidream, kandinsky5, ltx2, ltxv, anima, generic")


def run_reporting(action: Callable[[], object]) -> int:
    """Run a command; print its report (stdout) or its error (stderr) and return the exit status."""
    try:
        report = action()
    except LoraLabError as e:  # the input, the output path or a decision: refused before anything was written
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as e:  # disk full, permissions: the OS's words and the file, nothing was written
        print(f"error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    print(report)
    return EXIT_OK if getattr(report, "complete", True) else EXIT_INCOMPLETE


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="LoRA file (.safetensors; legacy .pt/.ckpt/.bin only if it holds plain tensors)")
    parser.add_argument("output", help="output .safetensors path")
    parser.add_argument("--to", required=True, choices=("comfyui", "diffusers"), help="target format")
    parser.add_argument("--arch", default=None, help=ARCH_HELP)
    parser.add_argument("--dtype", default="keep", choices=DTYPE_CHOICES)
    parser.add_argument("--strict", action="store_true",
                        help="refuse (exit 2, nothing written) if any key cannot be converted")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--adapter-config", action="store_true", help="also write adapter_config.json (diffusers)")
    parser.set_defaults(run=run_convert)


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="LoRA file")
    parser.add_argument("--arch", default=None, help=ARCH_HELP)
    parser.set_defaults(run=run_inspect)


def run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_file

    return run_reporting(lambda: convert_file(args.input, args.output, args.to, arch=args.arch, dtype=args.dtype,
                                              strict=args.strict, overwrite=args.overwrite,
                                              adapter_config=args.adapter_config))


def run_inspect(args: argparse.Namespace) -> int:
    from .inspect_lora import inspect_lora

    return run_reporting(lambda: inspect_lora(args.file, arch=args.arch))


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("loras", nargs="+", metavar="LORA[:WEIGHT]", help="LoRA files (any supported format, one "
                        "model family), each with an optional weight (default 1)")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors path")
    parser.add_argument("--rank", type=int, default=None,
                        help="truncate the sum by SVD to this rank (default: exact, ranks add up)")
    parser.add_argument("--to", default="comfyui", choices=("comfyui", "diffusers"), help="output format")
    parser.add_argument("--arch", default=None, help=ARCH_HELP)
    parser.add_argument("--dtype", default="keep", choices=DTYPE_CHOICES)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(run=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from .merge import merge_loras, parse_weighted

    return run_reporting(lambda: merge_loras([parse_weighted(s) for s in args.loras], args.output, rank=args.rank,
                                             to=args.to, arch=args.arch, dtype=args.dtype, overwrite=args.overwrite))


def add_resize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="LoRA file")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors path")
    parser.add_argument("--rank", type=int, default=None,
                        help="the new rank; with a dynamic criterion, the highest rank allowed")
    dynamic = parser.add_mutually_exclusive_group()
    dynamic.add_argument("--sv-ratio", type=float, default=None,
                         help="keep singular values >= the largest / RATIO (kohya sv_ratio)")
    dynamic.add_argument("--sv-fro", type=float, default=None,
                         help="keep the fewest singular values holding this fraction of the Frobenius norm")
    dynamic.add_argument("--sv-cumulative", type=float, default=None,
                         help="keep the fewest singular values summing to this fraction of their total")
    parser.add_argument("--to", default=None, choices=("comfyui", "diffusers"),
                        help="output format (default: the input's side)")
    parser.add_argument("--arch", default=None, help=ARCH_HELP)
    parser.add_argument("--dtype", default="keep", choices=DTYPE_CHOICES)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(run=run_resize)


def run_resize(args: argparse.Namespace) -> int:
    from .resize import resize_lora

    method, value = next(((m, v) for m, v in (("sv_ratio", args.sv_ratio), ("sv_fro", args.sv_fro),
                                               ("sv_cumulative", args.sv_cumulative)) if v is not None),
                         ("rank", None))
    return run_reporting(lambda: resize_lora(args.input, args.output, method=method, value=value, rank=args.rank,
                                             to=args.to, arch=args.arch, dtype=args.dtype, overwrite=args.overwrite))


def add_bake_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint or diffusion-model .safetensors")
    parser.add_argument("loras", nargs="+", metavar="LORA[:STRENGTH[:CLIP_STRENGTH]]",
                        help="LoRA files with their strength (default 1; a second number sets the text encoders' own)")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors path")
    parser.add_argument("--dtype", default="keep", choices=DTYPE_CHOICES, help="dtype of the output's float tensors")
    parser.add_argument("--arch", default=None, help=ARCH_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(run=run_bake)


def run_bake(args: argparse.Namespace) -> int:
    from .bake import bake, parse_bake_spec

    return run_reporting(lambda: bake(args.model, [parse_bake_spec(s) for s in args.loras], args.output,
                                      dtype=args.dtype, arch=args.arch, overwrite=args.overwrite))
