"""The package layering of docs/architecture.md and the file-size rule hold for every module.

A package of ``libs/`` may import only from packages in lower layers (and from itself); packages
in the same layer are independent of each other. Imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]

# lowest first; docs/architecture.md shows the same table
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("common",),
    ("config",),
    ("datasets", "ops", "audio"),
    ("modeling",),
    ("interop",),
    ("evaluation",),
    ("training",),
)
RANK: Dict[str, int] = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
MAX_LINES = 400


def _imported_packages(path: Path) -> List[Tuple[int, str]]:
    """(line, package under libs) of every ``libs.<package>`` import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = path.relative_to(ROOT / "libs").parts[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                      # relative: inside the package itself
                names = [f"libs.{own}"]
            else:
                names = [node.module or ""]
                if node.module == "libs":
                    names = [f"libs.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "libs" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def _layer_violations(paths: List[Path]) -> List[str]:
    bad = []
    for path in paths:
        own = path.relative_to(ROOT / "libs").parts[0]
        if own.endswith(".py"):
            continue                            # libs/__init__.py
        for line, pkg in _imported_packages(path):
            if pkg == own:
                continue
            if pkg not in RANK or own not in RANK:
                bad.append(f"{path.relative_to(ROOT)}:{line}: libs.{pkg} or libs.{own} is in no "
                           f"layer (add it to LAYERS and docs/architecture.md)")
            elif RANK[pkg] >= RANK[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: libs.{own} (layer {RANK[own]}) "
                           f"imports libs.{pkg} (layer {RANK[pkg]})")
    return bad


def test_packages_import_only_lower_layers():
    paths = sorted((ROOT / "libs").rglob("*.py"))
    assert len(paths) > 40
    assert _layer_violations(paths) == []


def test_every_package_has_a_layer():
    packages = {p.name for p in (ROOT / "libs").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule is not vacuous: a datasets module importing training is reported."""
    fake_root = tmp_path
    (fake_root / "libs" / "datasets").mkdir(parents=True)
    bad = fake_root / "libs" / "datasets" / "x.py"
    bad.write_text("from libs.training.loop import train_one_epoch\n"
                   "def f():\n    import libs.ops.nms\n    from libs.common import io\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", fake_root)
    found = _layer_violations([bad])
    assert found == ["libs/datasets/x.py:1: libs.datasets (layer 2) imports libs.training (layer 6)",
                     "libs/datasets/x.py:3: libs.datasets (layer 2) imports libs.ops (layer 2)"]


def test_no_file_over_the_size_limit():
    files = [p for d in ("libs", "tools", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")
             if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]  # not .ref/ etc.
    files += [ROOT / "train.py", ROOT / "eval.py"]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
