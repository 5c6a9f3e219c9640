#!/usr/bin/env python3
"""CI: type-check the product code as Windows, macOS and Python 3.10 see it; fail on what differs from Linux 3.12.

mypy checks calls into the standard library against typeshed's stubs for the platform and Python version asked
for, so `os.preadv` is an error for win32 and `import tomllib` one for 3.10, and neither for Linux 3.12. The
code's other type errors appear in every run alike and cancel out: only an error a variant has and the baseline
lacks fails CI. Third-party packages (torch, diffusers, ComfyUI, ...) are not analysed (--no-site-packages), which
keeps each run near a second; their missing-import errors are dropped, also where a version check imports one in a
single variant (`import tomli` below 3.11), while a missing standard-library module (tomllib on 3.10) counts.

Usage: python .ci/platform_check.py   (needs mypy: pip install -e ".[test]")
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lora_lab"  # the repository root is this package (pyproject: package-dir {"lora_lab": "."})
PRODUCT = ("__init__.py", "__main__.py", "nodes", "lora_core", "converters")
BASELINE = ("Linux, Python 3.12", "linux", "3.12")
VARIANTS = (("Windows, Python 3.12", "win32", "3.12"), ("macOS, Python 3.12", "darwin", "3.12"),
            ("Linux, Python 3.10", "linux", "3.10"))
FLAGS = ("--no-site-packages", "--check-untyped-defs", "--show-error-codes", "--hide-error-context",
         "--no-pretty", "--no-color-output", "--cache-dir", os.devnull)
MISSING = re.compile(r'\[import-(?:not-found|untyped)\]$')
QUOTED = re.compile(r'"([\w.]+)"')
CHECKED = re.compile(r"\(checked (\d+) source files?\)|Success: no issues found in (\d+) source files?")


def _copy_product(dest: Path) -> int:
    """The product code under dest/lora_lab (mypy names modules by folder), without tests/bench; the file count."""
    package = dest / PACKAGE
    package.mkdir()
    for name in PRODUCT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, package / name)
    return sum(1 for _ in package.rglob("*.py"))


def _stdlib() -> set[str]:
    """Top-level standard-library modules of any Python version, from mypy's typeshed (not the running Python's)."""
    import mypy

    versions = Path(mypy.__file__).parent / "typeshed" / "stdlib" / "VERSIONS"
    lines = (line.split("#")[0].strip() for line in versions.read_text().splitlines())
    return {line.split(":")[0].split(".")[0] for line in lines if line}


def _counts(line: str, stdlib: set[str]) -> bool:
    """Not a third-party package missing from mypy's view (none is installed for it)."""
    module = QUOTED.search(line)
    return not (MISSING.search(line) and module and module.group(1).split(".")[0] not in stdlib)


def _errors(workdir: Path, platform: str, version: str, files: int, stdlib: set[str]) -> set[str]:
    done = subprocess.run([sys.executable, "-m", "mypy", "--platform", platform, "--python-version", version,
                           *FLAGS, "-p", PACKAGE], cwd=workdir, capture_output=True, text=True)
    checked = CHECKED.search(done.stdout)
    if done.returncode not in (0, 1) or checked is None or int(checked.group(1) or checked.group(2)) != files:
        sys.exit(f"platform_check: mypy --platform {platform} --python-version {version} did not check the "
                 f"{files} files (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    prefix = PACKAGE + "/"
    return {line.removeprefix(prefix) for line in done.stdout.splitlines() if ": error: " in line and _counts(line, stdlib)}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="platform_check.") as tmp:
        workdir = Path(tmp)
        files, stdlib = _copy_product(workdir), _stdlib()
        runs = (BASELINE, *VARIANTS)
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            found = list(pool.map(lambda run: _errors(workdir, run[1], run[2], files, stdlib), runs))
    baseline, failed = found[0], 0
    for (label, platform, version), errors in zip(VARIANTS, found[1:]):
        new = sorted(errors - baseline)
        failed += len(new)
        print(f"platform_check: {label} (--platform {platform} --python-version {version}): "
              f"{len(new)} error(s) that {BASELINE[0]} does not have")
        for line in new:
            print(f"  {line}")
    print(f"platform_check: {files} files checked; the baseline's own {len(baseline)} error(s) are not counted")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
