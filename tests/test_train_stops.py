"""`lora-lab train` keeps the work of a run that stops early, like the node does.

A NaN loss, running out of memory, any other exception and Ctrl-C each leave <name>_stepNNNNN (both LoRA forms
and the state) for the last completed step, print what stopped the run and the command that resumes it; that
command, run as printed, finishes with the same bytes as a run that never stopped. The stops are made real
inside a tiny SD1.5 run: the backend's denoise returns NaN, raises torch's OutOfMemoryError or a ValueError,
or sends this process a SIGINT (what Ctrl-C does).
"""

from __future__ import annotations

import hashlib
import shlex
import signal

import pytest
import torch
from safetensors import safe_open

from cli_helpers import tiny_pipeline, write_config
from lora_lab.__main__ import main
from lora_lab.lora_core.cli import train as train_cli

STEPS, STOP_AT = 3, 2  # the hook strikes in step 2's forward
FINAL = ("lora.safetensors", "lora.diffusers.safetensors", "lora.state")


@pytest.fixture(autouse=True)
def usual_ctrl_c():
    """Ctrl-C as in an interactive shell, whatever this test process inherited (a background job ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _frozen_clock(mp: pytest.MonkeyPatch) -> None:
    """The metadata's start/finish times are the only bytes that differ between two runs of the same config."""
    mp.setenv("SOURCE_DATE_EPOCH", "1700000000")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A config of STEPS steps writing both forms, and the digests of the run that never stops."""
    root = tmp_path_factory.mktemp("stops")
    folder = tiny_pipeline("sd15", root)
    cfg = write_config(root / "run.toml", folder, root / "unused", train={"steps": STEPS})
    with pytest.MonkeyPatch.context() as mp:
        _frozen_clock(mp)
        assert main(["train", str(cfg), "--out", str(root / "straight")]) == 0
    return cfg, {name: _sha(root / "straight" / name) for name in FINAL}


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    _frozen_clock(monkeypatch)


def _stop_in_denoise(mp: pytest.MonkeyPatch, kind: str) -> None:
    """Load models as usual, but make the backend's denoise misbehave on its STOP_AT-th call (one per step here)."""
    load = train_cli.load_model

    def loading(*args, **kwargs):
        model = load(*args, **kwargs)
        denoise, calls = model.backend.denoise, []

        def misbehaving(*a, **k):
            calls.append(1)
            if len(calls) == STOP_AT:
                if kind == "oom":
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                if kind == "crash":
                    raise ValueError("boom")
                if kind == "ctrl_c":
                    signal.raise_signal(signal.SIGINT)
            out = denoise(*a, **k)
            return out * float("nan") if kind == "nan" and len(calls) == STOP_AT else out

        model.backend.denoise = misbehaving
        return model

    mp.setattr(train_cli, "load_model", loading)


def _resume_command(err: str) -> list[str]:
    line = next(line for line in err.splitlines() if line.startswith("resume with: "))
    words = shlex.split(line.removeprefix("resume with: "))
    assert words[:2] == ["lora-lab", "train"]
    return words[1:]


# kind -> (exit status, the last completed step, words of the reason)
STOPS = {"nan": (1, STOP_AT - 1, "loss became nan at step 2"),
         "oom": (1, STOP_AT - 1, "out of memory during step 2"),
         "crash": (1, STOP_AT - 1, "training failed during step 2: ValueError: boom"),
         "ctrl_c": (130, STOP_AT, "interrupted (Ctrl-C)")}


@pytest.mark.parametrize("kind", list(STOPS))
def test_a_stopped_run_keeps_its_last_step_and_resumes_to_the_same_bytes(kind, setup, tmp_path, capsys):
    cfg, straight = setup
    status, done, reason = STOPS[kind]
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        _stop_in_denoise(mp, kind)
        assert main(["train", str(cfg), "--out", str(out)]) == status
    err = capsys.readouterr().err
    stem = f"lora_step{done:05d}"
    assert reason in err and f"saved the LoRA after step {done}" in err, err
    assert str(out / f"{stem}.safetensors") in err and str(out / f"{stem}.state") in err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}{s}" for s in (".safetensors", ".diffusers.safetensors", ".state"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C behaves as usual again

    with safe_open(str(out / f"{stem}.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == str(done) and f.metadata()["ss_output_name"] == stem
        keys = list(f.keys())
        assert keys and all(k.startswith("lora_unet_") for k in keys)
        assert any(f.get_tensor(k).abs().max() > 0 for k in keys if k.endswith("lora_up.weight"))  # trained
    with safe_open(str(out / f"{stem}.diffusers.safetensors"), "pt") as f:
        assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in f.keys())

    command = _resume_command(err)
    assert command == ["train", str(cfg), "--out", str(out), "--resume", str(out / f"{stem}.state")]
    assert main(command) == 0
    assert {name: _sha(out / name) for name in FINAL} == straight


def test_a_second_stop_at_the_same_step_does_not_replace_the_first(setup, tmp_path, capsys):
    cfg, _ = setup
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        _stop_in_denoise(mp, "crash")
        assert main(["train", str(cfg), "--out", str(out)]) == 1
        first = {p.name: _sha(p) for p in out.iterdir()}
        assert main(["train", str(cfg), "--out", str(out), "--seed", "5"]) == 1
    assert "lora_step00001_00001.state" in capsys.readouterr().err
    assert {name: _sha(out / name) for name in first} == first
    assert (out / "lora_step00001_00001.safetensors").is_file() and (out / "lora_step00001_00001.diffusers.safetensors").is_file()


def test_a_crash_inside_the_optimizer_update_keeps_nothing_and_says_so(setup, tmp_path, capsys, monkeypatch):
    """Mid-update the LoRA matches no step: nothing can be saved from memory (the trainer's result is None)."""
    cfg, _ = setup
    step, calls = torch.optim.AdamW.step, []

    def failing_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "while updating the LoRA for step 2" in err and "Nothing was saved." in err and "resume with" not in err
    assert list(out.iterdir()) == []


def test_a_second_ctrl_c_stops_at_once(setup, tmp_path, capsys, monkeypatch):
    cfg, _ = setup
    load = train_cli.load_model

    def loading(*args, **kwargs):
        model = load(*args, **kwargs)
        denoise = model.backend.denoise

        def twice(*a, **k):
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            return denoise(*a, **k)

        model.backend.denoise = twice
        return model

    monkeypatch.setattr(train_cli, "load_model", loading)
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out)]) == 130
    assert "nothing more was saved" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_run_of_a_name_is_refused_before_loading_unless_overwrite(setup, tmp_path, capsys, monkeypatch):
    cfg, straight = setup
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    before = {p.name: _sha(p) for p in out.iterdir()}
    assert {n: before[n] for n in FINAL} == straight and len(before) == 5  # + the loss plot and the report
    load = train_cli.load_model

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a run that must be refused")

    monkeypatch.setattr(train_cli, "load_model", refuse)
    assert main(["train", str(cfg), "--out", str(out), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'lora.diffusers.safetensors'} exists" in err and "--overwrite" in err and "--name" in err, err
    assert {p.name: _sha(p) for p in out.iterdir()} == before

    monkeypatch.setattr(train_cli, "load_model", load)
    assert main(["train", str(cfg), "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    after = {p.name: _sha(p) for p in out.iterdir()}
    assert after.keys() == before.keys() and all(after[n] != before[n] for n in FINAL)


def test_ctrl_c_stays_ignored_where_the_run_was_started_ignoring_it():
    """nohup and service managers start processes with SIGINT ignored: the run must not start listening to it."""
    from lora_lab.lora_core.cli.train_stops import CtrlC

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with CtrlC() as ctrl_c:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and not ctrl_c.requested
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
