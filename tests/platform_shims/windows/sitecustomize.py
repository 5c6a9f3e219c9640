"""Run LoRA Lab as Windows' Python 3.10-3.12 sees `os`: the functions Windows lacks are gone from the pack.

Put this folder on PYTHONPATH (`PYTHONPATH=tests/platform_shims/windows python -m pytest`); Python imports
`sitecustomize` at start-up. Only modules named `lora_lab` / `lora_lab.*` are affected: once one has run, its
global `os` is WINDOWS_OS (the real module minus WINDOWS_LACKS), and a module that bound one of those functions
directly (`from os import preadv`) fails to import, as it would on Windows. torch, the standard library and the
tests keep the real `os`, so only the pack's own calls are put to the test.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import types

# Functions (and a few types/tables) in `os` on Linux but not on Windows with Python 3.10, 3.11 or 3.12: typeshed's
# os stubs for win32 vs linux (the docs' "Availability: Unix, not Windows"). fchmod arrives on Windows in 3.13.
WINDOWS_LACKS = frozenset({
    "chown", "chroot", "confstr", "confstr_names", "copy_file_range", "ctermid", "environb", "eventfd",
    "eventfd_read", "eventfd_write", "fchdir", "fchmod", "fchown", "fdatasync", "fork", "forkpty", "fpathconf",
    "fstatvfs", "fwalk", "get_blocking", "getegid", "getenvb", "geteuid", "getgid", "getgrouplist", "getgroups",
    "getloadavg", "getpgid", "getpgrp", "getpriority", "getrandom", "getresgid", "getresuid", "getsid", "getuid",
    "getxattr", "initgroups", "killpg", "lchown", "listxattr", "lockf", "login_tty", "major", "makedev",
    "memfd_create", "minor", "mkfifo", "mknod", "nice", "openpty", "pathconf", "pathconf_names", "pidfd_open",
    "pipe2", "posix_fadvise", "posix_fallocate", "posix_spawn", "posix_spawnp", "pread", "preadv", "pwrite",
    "pwritev", "readv", "register_at_fork", "removexattr", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getaffinity", "sched_getparam", "sched_getscheduler", "sched_param", "sched_rr_get_interval",
    "sched_setaffinity", "sched_setparam", "sched_setscheduler", "sched_yield", "sendfile", "set_blocking",
    "setegid", "seteuid", "setgid", "setgroups", "setns", "setpgid", "setpgrp", "setpriority", "setregid",
    "setresgid", "setresuid", "setreuid", "setsid", "setuid", "setxattr", "spawnlp", "spawnlpe", "spawnvp",
    "spawnvpe", "splice", "statvfs", "struct_rusage", "sync", "sysconf", "sysconf_names", "tcgetpgrp", "tcsetpgrp",
    "ttyname", "uname", "unshare", "wait", "wait3", "wait4", "waitid", "waitid_result", "writev",
})


class _WindowsOs(types.ModuleType):
    """The real `os` minus WINDOWS_LACKS. Assignments go to the real module, and `__dict__` shows its contents
    (pytest's monkeypatch reads the old value there), so patching the pack's `os` works as without the shim."""

    @property  # type: ignore[override]
    def __dict__(self):
        return {k: v for k, v in vars(os).items() if k not in WINDOWS_LACKS}

    def __getattr__(self, name: str):
        if name in WINDOWS_LACKS:
            raise AttributeError(f"module 'os' has no attribute {name!r} (hidden by the Windows shim)")
        return getattr(os, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(os, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(os, name)

    def __dir__(self):
        return sorted(set(dir(os)) - WINDOWS_LACKS)


WINDOWS_OS = _WindowsOs("os")


def _is_pack(name: str) -> bool:
    return name == "lora_lab" or name.startswith("lora_lab.")


class _Loader(importlib.abc.Loader):
    """The real loader; after the module runs, its `os` is swapped for WINDOWS_OS."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        lacking = {id(getattr(os, n)): n for n in WINDOWS_LACKS if hasattr(os, n)}
        for name, value in list(vars(module).items()):
            if value is os:
                setattr(module, name, WINDOWS_OS)
            elif id(value) in lacking and getattr(os, lacking[id(value)]) is value:
                raise ImportError(f"{module.__name__} imports os.{lacking[id(value)]}, which Windows lacks")

    def __getattr__(self, name: str):  # get_source, get_resource_reader, ... as the real loader has them
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds lora_lab modules with the finders after it (the editable install's, the path finder) and wraps
    their loader."""

    def find_spec(self, fullname, path, target=None):
        if not _is_pack(fullname):
            return None
        for finder in sys.meta_path[sys.meta_path.index(self) + 1:]:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


sys.meta_path.insert(0, _Finder())
