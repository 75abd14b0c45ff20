"""The layered layout: every module imports, and no package imports from a package above it."""
import importlib
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]


def all_modules():
    for pkg in PACKAGES:
        yield pkg
        for m in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}."):
            yield m.name


@pytest.mark.parametrize("name", sorted(set(all_modules())))
def test_every_module_imports(name):
    if name.startswith("backends.vllm") and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    importlib.import_module(name)


def lint_imports(cwd: Path):
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_contract_holds():
    p = lint_imports(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 kept, 0 broken" in p.stdout  # the layers, and no cycle between sibling modules


def test_import_contract_catches_a_back_edge(tmp_path):
    """The contracts are live: a copy of the tree with one upward import (lm -> loop) and one import
    circle inside a package (domains.base <-> domains.config) fails both."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "lm" / "lora.py", "a") as fh:
        fh.write("\n\ndef _back_edge():\n    from loop.runner import Loop  # noqa: F401\n")
    with open(tmp_path / "domains" / "base.py", "a") as fh:
        fh.write("\n\ndef _circle():\n    from domains.config import CorpusConfig  # noqa: F401\n")
    p = subprocess.run([shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports")),
                        "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)})
    assert p.returncode != 0 and "lm is not allowed to import loop" in p.stdout, p.stdout + p.stderr
    assert "No cycles are allowed in domains" in p.stdout, p.stdout
