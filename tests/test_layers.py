"""The layer rule of lora_core/ and converters/, read from their imports (every import, also inside functions).

    cli  ->  training  ->  data | adapters | optimizers  ->  cache  ->  files  ->  errors, exit_status, families, version

A module imports its own subpackage and the layers below its own, never a sibling of its layer nor one above.
converters/ may use lora_core's adapters, files and the bottom modules; lora_core imports neither converters/,
nodes/ nor the package root. The test names the offending import, so a new arrow is a visible decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BOTTOM = {"errors", "exit_status", "families", "version"}
RANK = {"cli": 5, "training": 4, "data": 3, "adapters": 3, "optimizers": 3, "cache": 2, "files": 1,
        **{name: 0 for name in BOTTOM}}
CONVERTERS_MAY_USE = {"adapters", "files", *BOTTOM}


def pack_module(path: Path, root: Path) -> str:
    """'lora_core.data.dataset' for root/lora_core/data/dataset.py ('' for the package root)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool, root: Path) -> list[tuple[int, str]]:
    """(line, module inside the pack, dotted from the pack root) of every import in `source`; `from pkg import x`
    counts as importing pkg.x where x is a module, else pkg itself."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [
                    f"{target}.{a.name}".strip(".") if _is_module(root, f"{target}.{a.name}".strip(".")) else target
                    for a in node.names]
            elif node.module and (node.module == "lora_lab" or node.module.startswith("lora_lab.")):
                names = [node.module[len("lora_lab"):].lstrip(".")]
            else:
                continue
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name[len("lora_lab"):].lstrip(".")) for a in node.names
                      if a.name == "lora_lab" or a.name.startswith("lora_lab.")]
    return found


def layer(module: str) -> str | None:
    """The lora_core layer of a module ('cli', 'data', ..., 'errors'); None outside lora_core."""
    parts = module.split(".")
    return parts[1] if parts[0] == "lora_core" and len(parts) > 1 else None


def violation(importer: str, imported: str) -> str | None:
    """Why importing `imported` from `importer` breaks the rule, or None."""
    top = imported.split(".")[0]
    if importer.startswith("lora_core"):
        if top in ("converters", "nodes") or imported == "" or top in ("__init__", "__main__"):
            return "lora_core imports neither converters/, nodes/ nor the package root"
        if top != "lora_core":
            return None
        mine, theirs = layer(importer), layer(imported)
        if theirs is None or mine == theirs:
            return None
        if mine is None:  # lora_core/__init__.py
            return None
        if RANK.get(theirs, 99) >= RANK[mine]:
            return f"{mine} may import only the layers below it ({', '.join(sorted(n for n, r in RANK.items() if r < RANK[mine]))})"
        return None
    if importer.startswith("converters"):
        if top in ("nodes",) or imported == "":
            return "converters import neither nodes/ nor the package root"
        if top == "lora_core" and layer(imported) not in CONVERTERS_MAY_USE:
            return f"converters may use lora_core's {', '.join(sorted(CONVERTERS_MAY_USE))} only"
    return None


def violations(root: Path = REPO) -> list[str]:
    out = []
    for folder in ("lora_core", "converters"):
        for path in sorted((root / folder).rglob("*.py")):
            module = pack_module(path, root)
            for line, imported in imported_modules(path.read_text(encoding="utf-8"), module,
                                                   path.name == "__init__.py", root):
                why = violation(module, imported)
                if why:
                    out.append(f"{path.relative_to(root)}:{line} imports {imported or 'the package root'}: {why}")
    return out


def test_lora_core_and_converters_keep_the_layer_rule():
    found = violations()
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("importer,line,why", [
    ("lora_core/data/dataset.py", "from ..training.trainer import train\n", "data may import only"),
    ("lora_core/files/lora_file.py", "from ..data.captions import tag_counts\n", "files may import only"),
    ("lora_core/data/samples.py", "from ..adapters.targets import PRESETS\n", "data may import only"),
    ("lora_core/cli/train.py", "from ...converters.convert import convert_file\n", "lora_core imports neither"),
    ("lora_core/files/lora_file.py", "from ... import __version__\n", "lora_core imports neither"),
    ("lora_core/training/run.py", "import lora_lab.nodes.train_node\n", "lora_core imports neither"),
    ("converters/convert.py", "from ..lora_core.training.trainer import train\n", "converters may use"),
])
def test_an_upward_or_sideways_import_is_named(tmp_path, importer, line, why):
    """The checker is not vacuous: each arrow the rule forbids, planted in a copy, is reported with its line."""
    module = tmp_path / importer
    module.parent.mkdir(parents=True)
    module.write_text(f'"""x"""\n\n{line}')
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(f"{importer}:3 ") and why in found[0], found
