"""merge and resize, checked on the deltas themselves.

merge (exact): the merged delta of every module equals the weighted sum of the inputs' deltas, whatever their
formats, ranks, alphas and adapter kinds; merge --rank: the reported relative error equals a recomputation.
resize: on LoRAs of known spectrum, exactly the expected singular values are kept.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from convert_deltas import module_deltas
from lora_lab.__main__ import main
from lora_lab.converters.low_rank import factors
from lora_lab.converters.lora_modules import read_lora_modules
from lora_lab.converters.merge import merge_loras, parse_weighted
from lora_lab.converters.resize import kept_rank, resize_lora

H = 32


def _flux_diffusers(path, rank, seed, alpha=None):
    """diffusers Flux LoRA: split q/k/v of double block 0, single block 0 without proj_mlp, an MLP layer."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (o, i) in {"transformer_blocks.0.attn.to_q": (H, H), "transformer_blocks.0.attn.to_k": (H, H),
                         "transformer_blocks.0.attn.to_v": (H, H), "transformer_blocks.0.ff.net.0.proj": (4 * H, H),
                         "single_transformer_blocks.0.attn.to_q": (H, H)}.items():
        sd[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, i, generator=g) / 4
        sd[f"transformer.{name}.lora_B.weight"] = torch.randn(o, rank, generator=g) / 4
    meta = {"lora_adapter_metadata": f'{{"transformer.r": {rank}, "transformer.lora_alpha": {alpha or rank}}}'}
    save_file(sd, path, metadata=meta)
    return sd, meta


def _flux_kohya(path, rank, seed, alpha):
    """kohya Flux LoRA on the fused qkv (a module the diffusers one has as three parts), plus a LoKr module."""
    g = torch.Generator().manual_seed(seed)
    sd = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(rank, H, generator=g) / 4,
          "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(3 * H, rank, generator=g) / 4,
          "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(float(alpha)),
          "lora_unet_double_blocks_0_img_attn_proj.lokr_w1": torch.randn(4, 4, generator=g) / 4,
          "lora_unet_double_blocks_0_img_attn_proj.lokr_w2": torch.randn(H // 4, H // 4, generator=g) / 4}
    save_file(sd, path)
    return sd


def _weighted_sum(*terms):
    out = {}
    for weight, deltas in terms:
        for k, d in deltas.items():
            out[k] = out.get(k, 0) + weight * d.float()
    return out


def test_exact_merge_is_the_weighted_sum_of_deltas(tmp_path):
    a, meta_a = _flux_diffusers(tmp_path / "a.safetensors", rank=4, seed=1, alpha=2)
    b = _flux_kohya(tmp_path / "b.safetensors", rank=3, seed=2, alpha=6)
    out = tmp_path / "m.safetensors"
    report = merge_loras([(tmp_path / "a.safetensors", 0.8), (tmp_path / "b.safetensors", -0.5)], out)
    assert report.complete and all(m.error == 0 for m in report.modules)
    merged = load_file(out)
    want = _weighted_sum((0.8, module_deltas(a, meta_a, arch="flux")), (-0.5, module_deltas(b, arch="flux")))
    got = module_deltas(merged, arch="flux")
    for key in set(want) | set(got):
        w = want.get(key, torch.zeros_like(got[key]))
        assert torch.allclose(got[key], w.reshape(got[key].shape), atol=1e-5), key
    qkv = next(m for m in report.modules if m.name == "double_blocks.0.img_attn.qkv")
    assert (qkv.rank_in, qkv.rank_out) == (3 * 4 + 3, 15)  # exact: the three parts' ranks + the kohya rank


def test_svd_merge_reports_the_error_it_makes(tmp_path):
    _flux_diffusers(tmp_path / "a.safetensors", rank=4, seed=3)
    _flux_kohya(tmp_path / "b.safetensors", rank=4, seed=4, alpha=4)
    out = tmp_path / "m.safetensors"
    report = merge_loras([(tmp_path / "a.safetensors", 1.0), (tmp_path / "b.safetensors", 0.7)], out, rank=2,
                         dtype="fp32")
    inputs = [(1.0, read_lora_modules(tmp_path / "a.safetensors")), (0.7, read_lora_modules(tmp_path / "b.safetensors"))]
    merged = {(m.part or m.name): m for m in read_lora_modules(out).modules}
    for result in report.modules:
        target = sum(w * factors(m.weights).matrix() for w, lora in inputs for m in lora.modules
                     if (m.part or m.name) == result.name)
        got = factors(merged[result.name].weights).matrix()
        assert merged[result.name].weights.rank == min(2, result.rank_in)
        error = float((target - got).norm() / target.norm())
        assert error == pytest.approx(result.error, rel=1e-3, abs=1e-6), result.name
    assert max(report.errors.values()) > 0.1  # rank 2 of rank 4..12 sums: a real truncation


def test_merge_of_a_dora_module_is_reported_not_approximated(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"transformer.x_embedder.lora_A.weight": torch.randn(2, 64, generator=g),
          "transformer.x_embedder.lora_B.weight": torch.randn(H, 2, generator=g),
          "transformer.x_embedder.lora_magnitude_vector": torch.rand(H, generator=g),
          "transformer.proj_out.lora_A.weight": torch.randn(2, H, generator=g),
          "transformer.proj_out.lora_B.weight": torch.randn(64, 2, generator=g)}
    save_file(sd, tmp_path / "d.safetensors")
    report = merge_loras([(tmp_path / "d.safetensors", 0.5)], tmp_path / "m.safetensors", arch="flux")
    assert not report.complete and "DoRA" in report.unmatched[0].reason and report.unmatched[0].key == "img_in"
    assert set(load_file(tmp_path / "m.safetensors")) == {"lora_unet_final_layer_linear.lora_down.weight",
                                                           "lora_unet_final_layer_linear.lora_up.weight",
                                                           "lora_unet_final_layer_linear.alpha"}


def test_merge_refuses_loras_of_two_models(tmp_path):
    _flux_diffusers(tmp_path / "a.safetensors", 4, 0)
    save_file({"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.randn(2, 16),
               "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.randn(16, 2)}, tmp_path / "wan.safetensors")
    with pytest.raises(Exception, match="wan.safetensors: none of its modules belong to a flux model"):
        merge_loras([(tmp_path / "a.safetensors", 1), (tmp_path / "wan.safetensors", 1)], tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_parse_weighted():
    assert parse_weighted("a.safetensors:0.8") == (parse_weighted("a.safetensors")[0], 0.8)
    assert parse_weighted("C:/x/a.safetensors")[1] == 1.0
    assert parse_weighted("a.safetensors:-1.5")[1] == -1.5


def _known_spectrum(path, s, out=48, inn=40, seed=0, alpha=None):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inn, len(s), generator=g, dtype=torch.float64))
    s = torch.tensor(s, dtype=torch.float64)
    rank = len(s)
    scale = (alpha or rank) / rank
    sd = {"lora_unet_blocks_0_self_attn_q.lora_up.weight": (u * s / scale).float().contiguous(),
          "lora_unet_blocks_0_self_attn_q.lora_down.weight": v.T.float().contiguous()}
    if alpha:
        sd["lora_unet_blocks_0_self_attn_q.alpha"] = torch.tensor(float(alpha))
    save_file(sd, path)


SPECTRUM = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625]


@pytest.mark.parametrize("method, value, rank, kept", [
    ("rank", None, 3, 3),
    ("sv_ratio", 10.0, None, 4),         # s >= 8/10
    ("sv_ratio", 10.0, 2, 2),            # --rank caps the dynamic choice
    ("sv_fro", 0.99, None, 3),           # sqrt(84/85.33) = 0.992 at k=3
    ("sv_cumulative", 0.95, None, 5),    # (15.5)/15.9375 = 0.973 at k=5, 0.941 at k=4
])
def test_resize_keeps_exactly_the_expected_singular_values(tmp_path, method, value, rank, kept):
    _known_spectrum(tmp_path / "a.safetensors", SPECTRUM, alpha=3.0)
    report = resize_lora(tmp_path / "a.safetensors", tmp_path / "r.safetensors", method=method, value=value, rank=rank,
                         arch="wan")
    (module,) = read_lora_modules(tmp_path / "r.safetensors").modules
    s = torch.linalg.svdvals(factors(module.weights).matrix().double())
    assert module.weights.rank == kept
    assert torch.allclose(s[:kept], torch.tensor(SPECTRUM[:kept], dtype=torch.float64), rtol=1e-5)
    assert s[kept:].abs().max() < 1e-5 if len(s) > kept else True
    dropped = sum(x * x for x in SPECTRUM[kept:])
    assert report.modules[0].error == pytest.approx(math.sqrt(dropped / sum(x * x for x in SPECTRUM)), rel=1e-6)


def test_kept_rank_matches_kohyas_definitions():
    s = torch.tensor(SPECTRUM)
    assert kept_rank(s, "sv_ratio", 1.0, None) == 1
    assert kept_rank(s, "sv_fro", 1.0, None) == 8 and kept_rank(s, "sv_cumulative", 1.0, None) == 8
    assert kept_rank(s, "rank", None, 100) == 8


def test_cli_merge_and_resize_exit_status(tmp_path, capsys):
    _flux_diffusers(tmp_path / "a.safetensors", 4, 5)
    _flux_kohya(tmp_path / "b.safetensors", 4, 6, 4)
    out = tmp_path / "m.safetensors"
    assert main(["merge", f"{tmp_path / 'a.safetensors'}:0.8", f"{tmp_path / 'b.safetensors'}:0.5", "-o", str(out)]) == 0
    assert "double_blocks.0.img_attn.qkv" in capsys.readouterr().out
    assert main(["resize", str(out), "-o", str(tmp_path / "r.safetensors"), "--sv-fro", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "error" in text and "rank" in text
    assert main(["resize", str(out), "-o", str(tmp_path / "r.safetensors"), "--rank", "2"]) == 2  # exists: refused
    assert main(["merge", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "x.safetensors")]) == 2


def test_modules_the_output_form_cannot_hold_are_listed_not_a_crash(tmp_path, capsys):
    """Input-axis DoRA has no PEFT layout and a model without a diffusers map has no diffusers names: merge and
    resize list such modules with the rule's reason (exit 3, the rest written) or, when nothing is left, exit 2
    with nothing written - never a traceback."""
    g = torch.Generator().manual_seed(3)
    sd = {}
    for n, dora in (("attn_to_q", True), ("attn_to_out_0", False)):
        b = f"lora_transformer_transformer_blocks_0_{n}"
        sd[b + ".lora_down.weight"], sd[b + ".lora_up.weight"] = torch.randn(4, H, generator=g), torch.randn(H, 4)
        if dora:
            sd[b + ".dora_scale"] = torch.rand(1, H, generator=g) + 0.5
    save_file(sd, tmp_path / "dora.safetensors")
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(tmp_path / "dora.safetensors"), "-o", str(out), "--to", "diffusers", "--arch", "flux"]) == 3
    text = capsys.readouterr().out
    assert "transformer_blocks.0.attn.to_q: DoRA with an input-axis scale" in text and "Traceback" not in text
    assert set(load_file(out)) == {"transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight",
                                   "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight"}
    save_file({"diffusion_model.blocks.0.mixer.lora_A.weight": torch.randn(2, 16, generator=g),
               "diffusion_model.blocks.0.mixer.lora_B.weight": torch.randn(16, 2, generator=g)},
              tmp_path / "generic.safetensors")
    for argv in (["resize", str(tmp_path / "generic.safetensors"), "-o", str(tmp_path / "r.safetensors"), "--rank", "1"],
                 ["merge", str(tmp_path / "generic.safetensors"), "-o", str(tmp_path / "r.safetensors")]):
        assert main(argv + ["--to", "diffusers"]) == 2
        err = capsys.readouterr().err
        assert "r.safetensors: nothing to write" in err and "no diffusers name map" in err, err
        assert not (tmp_path / "r.safetensors").exists()
