"""The import layout: families keep their private modules, models and backends never meet.

Every module of ``ucsciml/``, ``inference/``, ``models/``, ``case_studies/``, ``benchmarks/``
and ``tests/`` is parsed with :mod:`ast` (imports inside functions included; ``importlib``
strings are not imports, the registry's are checked separately below), and:

1. **Family privacy.** A model family is one module or sub-package of ``ucsciml.models``
   (``bpinn``, ``spectral_gp``, ``rgnp``, ``fbm_sde``, ``probconserv``). Anything of a family
   whose dotted name has a component starting with ``_`` after the family (a private module
   such as ``ucsciml.models.spectral_gp._kron``, or a private name such as
   ``ucsciml.models.rgnp.rgnp._field``) is imported only by modules of that family and by
   that family's own tests: ``tests/test_<family>.py`` and ``tests/test_<family>_*.py``
   (unit tests of its internals, e.g. the Kronecker algebra). Every other module (the
   spine, other families, other tests, case studies, benchmarks) uses public names, which
   each family's ``__init__`` re-exports. A private name directly under ``ucsciml.models``
   (``ucsciml.models._x``) is private to ``models/``.
2. **Layers.** ``models/`` never imports ``ucsciml.inference``, ``inference/`` never imports
   ``ucsciml.models``, and the spine (``ucsciml/``) imports neither: it names them only as
   strings in ``ucsciml/registry.py``.

The registry's targets are public names that resolve; ``FAMILIES`` lists every family under
``models/`` (what ``ucsciml list`` prints), and ``pyproject.toml`` lists every package, so a
wheel ships every family.
"""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest

from ucsciml import registry

ROOT = Path(__file__).resolve().parents[1]
# directory -> (dotted package it installs as, or a plain name for script folders; layer)
TREES = {
    "ucsciml": ("ucsciml", "spine"),
    "models": ("ucsciml.models", "models"),
    "inference": ("ucsciml.inference", "inference"),
    "case_studies": ("ucsciml.cases", "cases"),
    "benchmarks": ("benchmarks", "benchmarks"),
    "tests": ("tests", "tests"),
}
FORBIDDEN_LAYERS = {
    "models": ("ucsciml.inference",),
    "inference": ("ucsciml.models",),
    "spine": ("ucsciml.models", "ucsciml.inference"),
}
MODELS = "ucsciml.models"


def _modules():
    """``(path, dotted module name, layer)`` for every Python file of the trees."""
    for folder, (package, layer) in TREES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts or ".hypothesis" in path.parts:
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield path, ".".join((package, *parts)), layer


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every dotted name an import statement brings in: ``import a.b`` gives ``a.b``,
    ``from a import b`` gives ``a.b`` (a submodule or an attribute: both count)."""
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            names.append((node.lineno, base))
    return names


def _owner(target: str) -> tuple[str, str] | None:
    """``(owning package, family)`` when ``target`` is private to part of ``ucsciml.models``."""
    parts = target.split(".")
    if parts[:2] != ["ucsciml", "models"] or len(parts) < 3:
        return None
    if parts[2].startswith("_"):
        return MODELS, ""
    if any(p.startswith("_") for p in parts[3:]):
        return f"{MODELS}.{parts[2]}", parts[2]
    return None


def _is_family_test(module: str, family: str) -> bool:
    return bool(family) and re.fullmatch(rf"tests\.test_{family}(_\w+)?", module) is not None


def violations(module: str, layer: str, source: str, is_package: bool = False) -> list[str]:
    """The layout rules ``source`` (the text of ``module`` in ``layer``) breaks."""
    found = []
    for line, target in _imported_names(ast.parse(source), module, is_package):
        owner = _owner(target)
        if owner is not None:
            package, family = owner
            inside = module == package or module.startswith(package + ".")
            if not inside and not _is_family_test(module, family):
                found.append(
                    f"{module}:{line} imports {target}, private to {package}; import a public "
                    f"name (re-export it from {package}'s __init__ if it has none)"
                )
        for forbidden in FORBIDDEN_LAYERS.get(layer, ()):
            if target == forbidden or target.startswith(forbidden + "."):
                found.append(f"{module}:{line} ({layer}) imports {target}: layer rule")
    return found


def test_no_module_imports_another_familys_private_modules_or_crosses_layers():
    found = []
    for path, module, layer in _modules():
        found += violations(module, layer, path.read_text(), path.name == "__init__.py")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "layer", "source", "broken"),
    [
        ("ucsciml.cases.study", "cases", "from ucsciml.models.spectral_gp import _kron", True),
        ("ucsciml.cases.study", "cases", "import ucsciml.models.fbm_sde._mafbm as m", True),
        ("benchmarks.b", "benchmarks", "from ucsciml.models.rgnp.rgnp import _field", True),
        ("ucsciml.cases.study", "cases", "from ucsciml.models import _gp_solve", True),
        ("tests.test_rgnp", "tests", "from ucsciml.models.spectral_gp import _kron", True),
        (
            "ucsciml.models.rgnp.rgnp",
            "models",
            "from ucsciml.models.spectral_gp import _kron",
            True,
        ),
        ("ucsciml.models.rgnp.rgnp", "models", "from ..spectral_gp._kron import kron", True),
        ("ucsciml.models.rgnp.rgnp", "models", "from ucsciml import inference", True),
        ("ucsciml.inference.nuts", "inference", "from ucsciml.models import RGNP", True),
        ("ucsciml.runner", "spine", "import ucsciml.inference.nuts", True),
        (
            "tests.test_spectral_gp_sensors",
            "tests",
            "from ucsciml.models.spectral_gp import _kron",
            False,
        ),
        ("ucsciml.models.rgnp.rgnp", "models", "from ._gicnet import GICNet", False),
        (
            "ucsciml.models.rgnp.rgnp",
            "models",
            "from ucsciml.models.rgnp import _rgnp_train",
            False,
        ),
        (
            "ucsciml.cases.study",
            "cases",
            "from ucsciml.models.spectral_gp import SpectralGP",
            False,
        ),
        (
            "ucsciml.models.probconserv.probconserv",
            "models",
            "from ucsciml.models import SpectralGP",
            False,
        ),
    ],
)
def test_the_checker_flags_what_it_should(module, layer, source, broken):
    assert bool(violations(module, layer, source)) is broken


def test_registry_targets_are_public_and_resolve():
    tables = {
        "models": registry.MODELS,
        "backends": registry.BACKENDS,
        "pdes": registry.PDES,
        "families": {name: family.target for name, family in registry.FAMILIES.items()},
    }
    for kind, table in tables.items():
        for name, target in table.items():
            module, _, attr = target.partition(":")
            assert not any(p.startswith("_") for p in [*module.split("."), attr]), (kind, name)
            obj = importlib.import_module(module)
            assert getattr(obj, attr) if attr else obj, (kind, name, target)


def test_every_family_is_registered_and_case_file_models_are_families():
    on_disk = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "models").iterdir()
        if not p.name.startswith("_")
        and ((p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file())
    }
    assert on_disk == set(registry.FAMILIES)
    for name, target in registry.MODELS.items():
        assert registry.FAMILIES[name].target == target
    for family in registry.FAMILIES.values():
        assert family.description and "\n" not in family.description


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    # a folder mapped on its own (ucsciml.pde) is also found under its parent's mapping;
    # ucsciml.cases (case_studies/, package data) is listed without an __init__.py
    assert found <= set(config["packages"]), sorted(found - set(config["packages"]))
