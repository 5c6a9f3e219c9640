"""`lora-lab convert IN OUT --to comfyui|diffusers` and `lora-lab inspect FILE`."""

from __future__ import annotations

import argparse
import sys

from ..lora_core.errors import LoraLabError


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="LoRA file (.safetensors; legacy .pt/.ckpt/.bin only if weights_only-loadable)")
    parser.add_argument("output", help="output .safetensors path")
    parser.add_argument("--to", required=True, choices=("comfyui", "diffusers"), help="target format")
    parser.add_argument("--arch", default=None, help="model family when detection is ambiguous "
                        "(flux, sd15, sdxl, sd3, sana, wan, hunyuan_video)")
    parser.add_argument("--dtype", default="keep", choices=("keep", "fp16", "bf16", "fp32"))
    parser.add_argument("--strict", action="store_true", help="fail if any key cannot be converted")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--adapter-config", action="store_true", help="also write adapter_config.json (diffusers)")
    parser.set_defaults(run=run_convert)


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="LoRA file")
    parser.add_argument("--arch", default=None, help="model family when detection is ambiguous")
    parser.set_defaults(run=run_inspect)


def run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_file

    try:
        report = convert_file(args.input, args.output, args.to, arch=args.arch, dtype=args.dtype, strict=args.strict,
                              overwrite=args.overwrite, adapter_config=args.adapter_config)
    except LoraLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from .inspect_lora import inspect_lora

    try:
        print(inspect_lora(args.file, arch=args.arch))
    except LoraLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
