"""The Windows shim CI runs the suite under (tests/platform_shims/windows): the pack loses what Windows lacks,
the rest of the process keeps the real os."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHIM = Path(__file__).parent / "platform_shims" / "windows"

pytestmark = pytest.mark.skipif(not hasattr(os, "preadv") or not hasattr(os, "fchmod"),
                                reason="this platform lacks os.preadv / os.fchmod already")

PROBE = """
import os, shutil
import lora_lab.lora_core.errors
import lora_lab.lora_core.files.atomic as atomic
pack_os = atomic.os
assert pack_os is not os, "the pack's os was not swapped"
assert not hasattr(pack_os, "preadv") and getattr(pack_os, "fchmod", None) is None
assert hasattr(os, "preadv") and hasattr(shutil.os, "fchmod"), "the real os lost functions"
assert pack_os.path.join("a", "b") == os.path.join("a", "b") and pack_os.replace is os.replace
import pytest
real_replace, patch = os.replace, pytest.MonkeyPatch()
patch.setattr(pack_os, "replace", "patched")  # patching the pack's os patches the real one, as without the shim
assert os.replace == "patched"
patch.undo()
assert os.replace is real_replace

import types, sitecustomize
class BindsPreadv:  # a pack module doing `from os import preadv` fails to import, as on Windows
    def exec_module(self, module):
        exec("from os import preadv", vars(module))
try:
    sitecustomize._Loader(BindsPreadv()).exec_module(types.ModuleType("lora_lab.fake"))
    raise SystemExit("from os import preadv was allowed")
except ImportError as error:
    assert "os.preadv" in str(error), error
print("ok")
"""


def _run(code: str, shim: bool) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, with the shim on PYTHONPATH or without it (CI runs this file under it too)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != SHIM.resolve()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIM)] * shim + paths)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_shim_hides_windows_lacking_os_functions_from_the_pack_only():
    done = _run(PROBE, shim=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_without_the_shim_the_pack_sees_the_real_os():
    done = _run("import os, lora_lab.lora_core.files.atomic as a; print(a.os is os)", shim=False)
    assert done.stdout.strip() == "True", done.stderr
