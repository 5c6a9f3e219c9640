"""Figures for merge and resize, through the command line, on two synthetic full-size Flux LoRAs.

A: diffusers/PEFT, rank 16, random factors (a flat spectrum). B: the same layers at rank 8 with a known, decaying
spectrum (singular values 1, 1/2, 1/4, ...), converted to ComfyUI/kohya form first, so the merge mixes formats.
Then, each run as `python -m lora_lab ...`:

  merge A:0.8 B:0.5            exact: largest relative distance of any module's delta from 0.8 dA + 0.5 dB
  merge A:0.8 B:0.5 --rank 8   SVD: the reported errors, and the largest gap to a recomputation
  resize B --sv-fro 0.99       dynamic: the ranks kept (expected 3 per part: 1, 1/2, 1/4 hold 99.2% of the norm;
                               a fused qkv holds three parts' spectra, so 9) and the error

Deltas are compared through their factors (never forming out x in matrices). --double/--single keep the first
N double/single blocks (full-size layers; the default is all of Flux's 19/38). Usage:
    python bench/combine_figures.py [--double 19] [--single 38] [--dir /tmp] [--json bench/results/combine_flux.json]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_bench import flux_modules  # noqa: E402

SPECTRUM = [2.0 ** -i for i in range(8)]


def _lora_a(path: Path, rank: int, layers: dict) -> None:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, (out, inn) in layers.items():
        sd[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, inn, generator=g) / math.sqrt(inn)
        sd[f"transformer.{name}.lora_B.weight"] = torch.randn(out, rank, generator=g) * 0.01
    save_file(sd, path, metadata={"lora_adapter_metadata": f'{{"transformer.r": {rank}, "transformer.lora_alpha": {rank}}}'})


def _lora_b(path: Path, layers: dict) -> None:
    """Known spectrum per module: up = U diag(s), down = V^T with orthonormal U, V (alpha = rank: scale 1)."""
    g = torch.Generator().manual_seed(1)
    s = torch.tensor(SPECTRUM) * 0.05
    sd = {}
    for name, (out, inn) in layers.items():
        u, _ = torch.linalg.qr(torch.randn(out, len(s), generator=g))
        v, _ = torch.linalg.qr(torch.randn(inn, len(s), generator=g))
        sd[f"transformer.{name}.lora_A.weight"] = v.T.contiguous()
        sd[f"transformer.{name}.lora_B.weight"] = (u * s).contiguous()
    save_file(sd, path)


def _cli(*argv) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lora_lab", *map(str, argv)], capture_output=True, text=True)
    if done.returncode not in (0, 3):  # 3: written, some keys unconverted (lora_core/exit_status.py)
        raise SystemExit(f"lora-lab {' '.join(map(str, argv))} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode, done.stdout, time.perf_counter() - t0


def _deltas(path: Path) -> dict:
    from lora_lab.converters.low_rank import factors
    from lora_lab.converters.lora_modules import read_lora_modules

    return {(m.part or m.name): factors(m.weights) for m in read_lora_modules(path, "flux").modules}


def _relative_gap(got, terms) -> float:
    """||got - sum w f|| / ||sum w f|| through the SVD of the stacked factors (exact, low rank)."""
    from lora_lab.converters.low_rank import stack, svd

    target = svd(stack(terms))[1]
    diff = svd(stack([(1.0, got)] + [(-w, f) for w, f in terms]))[1]
    return float(diff.norm() / target.norm())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--double", type=int, default=19)
    ap.add_argument("--single", type=int, default=38)
    args = ap.parse_args()
    layers = flux_modules(double=args.double, single=args.single)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="lora_combine_"))
    a, b_diffusers, b = tmp / "a.safetensors", tmp / "b_diffusers.safetensors", tmp / "b.safetensors"
    _lora_a(a, 16, layers)
    _lora_b(b_diffusers, layers)
    status, _, _ = _cli("convert", b_diffusers, b, "--to", "comfyui", "--overwrite")
    assert status == 0
    da, db = _deltas(a), _deltas(b)
    figures: dict = {"double_blocks": args.double, "single_blocks": args.single, "modules_a": len(da),
                     "modules_b": len(db)}

    status, out, seconds = _cli("merge", f"{a}:0.8", f"{b}:0.5", "-o", tmp / "exact.safetensors", "--overwrite")
    merged = _deltas(tmp / "exact.safetensors")
    gaps = [_relative_gap(f, [(0.8, da[k]), (0.5, db[k])]) for k, f in merged.items()]
    figures["exact"] = {"exit": status, "seconds": round(seconds, 1), "modules": len(merged),
                        "ranks": sorted({f.rank for f in merged.values()}), "max_relative_gap": max(gaps)}
    print(f"exact merge: exit {status}, {len(merged)} modules, ranks {figures['exact']['ranks']}, "
          f"max relative gap to 0.8 dA + 0.5 dB {max(gaps):.2e} ({seconds:.1f} s)")

    status, out, seconds = _cli("merge", f"{a}:0.8", f"{b}:0.5", "-o", tmp / "svd.safetensors", "--rank", "8",
                                "--overwrite")
    reported = {line.split()[0]: float(line.split("error ")[1].split()[0]) for line in out.splitlines()
                if line.startswith("  ") and " rank " in line and " error " in line}
    svd_merged = _deltas(tmp / "svd.safetensors")
    recomputed = {k: _relative_gap(f, [(0.8, da[k]), (0.5, db[k])]) for k, f in svd_merged.items()}
    worst = max(abs(reported[k] - recomputed[k]) for k in recomputed)
    errors = sorted(reported.values())
    figures["svd_rank_8"] = {"exit": status, "seconds": round(seconds, 1), "modules": len(reported),
                             "error_min": errors[0], "error_median": errors[len(errors) // 2], "error_max": errors[-1],
                             "max_reported_vs_recomputed": worst}
    print(f"SVD merge to rank 8: exit {status}, relative error min {errors[0]:.4f} median "
          f"{errors[len(errors) // 2]:.4f} max {errors[-1]:.4f}; reported vs recomputed: max gap {worst:.1e}")

    status, out, seconds = _cli("resize", b, "-o", tmp / "resized.safetensors", "--sv-fro", "0.99", "--overwrite")
    kept = sorted({f.rank for f in _deltas(tmp / "resized.safetensors").values()})
    res_errors = [float(line.split("error ")[1].split()[0]) for line in out.splitlines()
                  if line.startswith("  ") and " error " in line]
    expected = math.sqrt(sum(x * x for x in SPECTRUM[3:]) / sum(x * x for x in SPECTRUM))
    figures["resize_sv_fro_0.99"] = {"exit": status, "seconds": round(seconds, 1), "ranks_kept": kept,
                                     "error_max": max(res_errors), "expected_error": expected}
    print(f"resize --sv-fro 0.99 of B (spectrum 1, 1/2, ... 1/128): exit {status}, ranks kept {kept}, relative error "
          f"max {max(res_errors):.5f} (expected {expected:.5f})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
