"""lora_core.devices: the device-kind branches (cuda, xpu, mps, cpu), checked with availability monkeypatched
(no MPS or XPU here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lora_lab.lora_core.training import devices
from lora_lab.lora_core.training import precision
from lora_lab.lora_core.training import state as train_state
from lora_lab.lora_core.errors import TrainingError
from lora_lab.lora_core.cli.train_inputs import device as _device


def _have(monkeypatch, *kinds: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: "cuda" in kinds)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: "xpu" in kinds)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: "mps" in kinds)


@pytest.mark.parametrize("kinds, expected", [(("cuda", "xpu", "mps"), "cuda"), (("xpu", "mps"), "xpu"),
                                             (("mps",), "mps"), ((), "cpu")])
def test_default_device_prefers_cuda_then_xpu_then_mps(monkeypatch, kinds, expected):
    _have(monkeypatch, *kinds)
    assert devices.default_device() == torch.device(expected)
    auto = SimpleNamespace(model=SimpleNamespace(device="auto"))
    assert _device(auto, None) == torch.device(expected)  # lora-lab train's device = "auto"
    assert _device(SimpleNamespace(model=SimpleNamespace(device="cpu")), None) == torch.device("cpu")


def test_a_torch_without_xpu_or_mps_modules_is_cpu(monkeypatch):
    _have(monkeypatch)
    monkeypatch.delattr(torch, "xpu")
    monkeypatch.delattr(torch.backends, "mps")
    assert devices.default_device() == torch.device("cpu") and not devices.is_available("xpu")


def test_autocast_availability_on_older_torch(monkeypatch):
    assert devices.autocast_available("cpu")
    monkeypatch.delattr(torch.amp, "is_autocast_available")  # torch < 2.4
    assert [devices.autocast_available(k) for k in ("cuda", "cpu", "xpu", "mps")] == [True, True, True, False]


def test_bf16_support_per_kind(monkeypatch):
    assert devices.supports_bf16(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert not devices.supports_bf16(torch.device("cuda"))
    for macos_14, expected in ((True, True), (False, False)):
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor, v=macos_14: v)
        assert devices.supports_bf16(torch.device("mps")) is expected
    monkeypatch.delattr(torch.xpu, "is_bf16_supported", raising=False)
    assert devices.supports_bf16(torch.device("xpu"))


def test_autocast_refuses_what_the_device_cannot_do(monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(precision.autocast("bf16", cpu), torch.autocast)
    monkeypatch.setattr(devices.torch.amp, "is_autocast_available", lambda kind: kind != "mps")
    with pytest.raises(TrainingError, match="fp16 autocast is not available on mps"):
        precision.autocast("fp16", torch.device("mps"))
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: False)
    monkeypatch.setattr(devices.torch.amp, "is_autocast_available", lambda kind: True)
    with pytest.raises(TrainingError, match="cannot compute in bf16"):
        precision.autocast("bf16", torch.device("mps"))
    assert isinstance(precision.autocast("fp32", torch.device("mps")), type(precision.autocast("fp32", cpu)))


class _FakeDevice:
    """Stands in for torch.mps / torch.xpu: one generator state, set/get calls recorded."""

    def __init__(self):
        self.state, self.calls = torch.tensor([1, 2, 3], dtype=torch.uint8), []

    def get_rng_state(self, *device):
        self.calls.append(("get", device))
        return self.state.clone()

    def set_rng_state(self, state, *device):
        self.calls.append(("set", device))
        self.state = state.clone()

    def empty_cache(self):
        self.calls.append(("empty", ()))


@pytest.mark.parametrize("kind", ["mps", "xpu"])
def test_rng_state_saves_and_restores_the_device_generator(monkeypatch, kind):
    fake = _FakeDevice()
    monkeypatch.setattr(torch, kind, fake)
    device, gen = torch.device(kind), torch.Generator().manual_seed(0)
    state = train_state.rng_state(gen, device)
    assert state[kind] == [1, 2, 3] and "cuda" not in state
    fake.state = torch.tensor([9], dtype=torch.uint8)
    train_state.restore_rng(state, gen, device)
    assert fake.state.tolist() == [1, 2, 3]
    # mps has one device and older torch takes no argument; xpu, like cuda, is told which device
    assert fake.calls[0] == ("get", () if kind == "mps" else (device,))
    fake.calls.clear()
    saved_on_cuda = {"generator": state["generator"], "cpu": state["cpu"], "cuda": [5]}
    train_state.restore_rng(saved_on_cuda, gen, device)  # a state from another kind leaves this generator alone
    assert fake.calls == []
    devices.empty_cache(device)
    assert fake.calls == [("empty", ())]


def test_cpu_states_have_no_device_entry():
    state = train_state.rng_state(torch.Generator().manual_seed(0), torch.device("cpu"))
    assert set(state) == {"generator", "cpu"}
    devices.empty_cache(torch.device("cpu"))  # nothing to release, no error


def test_fork_rng_restores_cpu_and_device_generators(monkeypatch):
    fake = _FakeDevice()
    monkeypatch.setattr(torch, "mps", fake)
    before = torch.get_rng_state()
    with devices.fork_rng(torch.device("mps")):
        torch.rand(3)
        fake.state = torch.tensor([7], dtype=torch.uint8)
    assert torch.equal(torch.get_rng_state(), before) and fake.state.tolist() == [1, 2, 3]
