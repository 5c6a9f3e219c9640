"""Streaming safetensors writer and pread reader: exact bytes, atomic on failure, torch threads restored."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_lab.converters import convert_file
from lora_lab.lora_core.files.safetensors_io import write_streaming
from lora_lab.converters.source import open_source


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(7, 5, generator=g).bfloat16(), "b.alpha": torch.tensor(3.0),
            "empty": torch.zeros(0, 4), "c": torch.randint(0, 100, (3, 2, 2), generator=g, dtype=torch.int64),
            "big": torch.randn(300, 257, generator=g).half()}


def test_streaming_writer_round_trips_every_dtype_and_shape(tmp_path):
    ts = _tensors()
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in ts.items()]
    write_streaming(tmp_path / "out.safetensors", entries, {"k": "v"}, iter(ts.items()))
    back = load_file(tmp_path / "out.safetensors")
    assert set(back) == set(ts)
    for k, t in ts.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k


def test_streaming_writer_failure_leaves_no_file(tmp_path):
    ts = _tensors()
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in ts.items()]

    def failing():
        yield "a", ts["a"]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_streaming(tmp_path / "out.safetensors", entries, None, failing())
    assert list(tmp_path.iterdir()) == []


def test_pread_source_reads_exact_tensors(tmp_path):
    ts = _tensors()
    save_file(ts, tmp_path / "in.safetensors")
    src = open_source(tmp_path / "in.safetensors")
    try:
        for k, t in ts.items():
            got = src.get(k)
            assert got.dtype == t.dtype and tuple(got.shape) == tuple(t.shape) and torch.equal(got, t), k
    finally:
        src.close()


def test_convert_file_restores_torch_threads(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 16, generator=g),
          "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(16, 4, generator=g)}
    save_file(sd, tmp_path / "in.safetensors")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        convert_file(tmp_path / "in.safetensors", tmp_path / "out.safetensors", "comfyui", arch="flux")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
