"""One exit-status table for every `lora-lab` command (lora_core/exit_status.py):
0 done, 1 failed while working, 2 refused with nothing written, 3 written but incomplete, 130 Ctrl-C.

The statuses each command reaches through its own code are tested beside it (convert: test_convert_cli_exit.py,
merge/resize: test_merge_resize.py, bake: test_bake.py, train: test_train_config.py and test_train_stops.py);
these are the ones every command shares, and the command line on Python 3.10 (no tomllib)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_lab.__main__ import main
from lora_lab.lora_core.exit_status import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED

USAGE_ERRORS = {"demo": ["demo", "--steps", "many"], "train": ["train", "--no-such-flag"], "cache": ["cache"],
                "convert": ["convert", "a.safetensors", "b.safetensors"], "inspect": ["inspect"],
                "merge": ["merge", "a.safetensors"], "resize": ["resize", "a.safetensors", "--rank", "2"],
                "bake": ["bake", "model.safetensors"]}


def test_the_table():
    assert (EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INCOMPLETE, EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)


@pytest.mark.parametrize("command", list(USAGE_ERRORS))
def test_a_usage_error_is_refused_with_2(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main(USAGE_ERRORS[command])
    assert stop.value.code == EXIT_REFUSED
    assert "error:" in capsys.readouterr().err


def _lora(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 32, generator=g),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(32, 4, generator=g)}, path)
    return path


def test_a_full_disk_while_writing_fails_with_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    from lora_lab.lora_core.files import atomic

    monkeypatch.setattr(os, "posix_fallocate", full)  # Linux: fallocate finds the disk full
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(_lora(tmp_path / "a.safetensors")), str(out), "--to", "comfyui"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "no space left on the device" in err and str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_ctrl_c_in_any_command_exits_130_without_a_partial_file(tmp_path, capsys, monkeypatch):
    from lora_lab.lora_core.files import safetensors_io

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors_io, "_write_all", interrupted)  # while the output is being written
    assert main(["convert", str(_lora(tmp_path / "a.safetensors")), str(tmp_path / "b.safetensors"),
                 "--to", "comfyui"]) == EXIT_INTERRUPTED
    assert "lora-lab convert: interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_cache_refuses_a_missing_folder_and_fails_on_a_file_it_cannot_delete(tmp_path, capsys, monkeypatch):
    from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore

    assert main(["cache", str(tmp_path / "missing")]) == EXIT_REFUSED
    EncodingCache(tmp_path, memory=MemoryStore()).get_or_encode("latents", "77" * 20, lambda: torch.ones(4))

    def held(self, missing_ok=False):
        raise PermissionError(errno.EACCES, "held by another program", str(self))

    monkeypatch.setattr(Path, "unlink", held)
    assert main(["cache", str(tmp_path), "--clear"]) == EXIT_FAILED
    assert "held by another program" in capsys.readouterr().err


def test_demo_refuses_a_missing_dataset(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), "--dataset", str(tmp_path / "none")]) == EXIT_REFUSED
    assert "Dataset folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _without_tomllib(code: str, tomli: bool) -> subprocess.CompletedProcess:
    """Python 3.10 as far as TOML goes: no tomllib, a 3.10 version number (the pack picks its TOML reader by
    version), and tomli (the backport, same API) only if asked for. torch is imported first, at the real version."""
    setup = ("import sys, torch, tomllib; sys.modules['tomli'] = tomllib if %s else None; sys.modules['tomllib'] = None; "
             "sys.version_info = (3, 10, 13, 'final', 0)\n" % tomli)
    return subprocess.run([sys.executable, "-c", setup + code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_the_command_line_works_without_tomllib(tmp_path):
    from cli_helpers import write_config

    cfg = write_config(tmp_path / "run.toml", tmp_path / "no_model", tmp_path / "out")
    run = "from lora_lab.__main__ import main; sys.exit(main(sys.argv[1:]))"
    done = _without_tomllib(f"sys.argv[1:] = ['inspect', '--help']\n{run}", tomli=False)
    assert done.returncode == 0, done.stderr  # building the parser reads no TOML
    done = _without_tomllib(f"sys.argv[1:] = ['train', {str(cfg)!r}]\n{run}", tomli=False)
    assert done.returncode == EXIT_REFUSED and "needs the tomli package: pip install tomli" in done.stderr
    done = _without_tomllib(f"sys.argv[1:] = ['train', {str(cfg)!r}]\n{run}", tomli=True)
    assert done.returncode == EXIT_REFUSED and "model folder not found" in done.stderr, done.stderr  # read, then checked
