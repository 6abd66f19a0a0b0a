"""The package's layers import one way only: core <- perception, arm <- policy <- sim <- tools.

Every import in shared/so101_deploy (top-level and the lazy ones inside functions) is read with ast, so a
layer that reaches up, or perception and arm reaching into each other, fails here, not in review."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shared" / "so101_deploy"
# what each layer may import besides itself
ALLOWED = {
    "core": set(),
    "perception": {"core"},
    "arm": {"core"},
    "policy": {"core", "perception", "arm"},
    "sim": {"core", "perception", "arm", "policy"},
    "tools": {"core", "perception", "arm", "policy", "sim"},
}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def imported_layers(path: Path) -> set[tuple[str, int]]:
    """(layer, line) of every so101_deploy import in a module."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports would hide the layer: the package uses absolute ones
                names.append("." * node.level + (node.module or ""))
            elif node.module:
                names.append(node.module)
                if node.module == "so101_deploy":
                    names += [f"so101_deploy.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        for name in names:
            if name.startswith("."):
                found.add(("relative", node.lineno))
            elif name.startswith("so101_deploy."):
                found.add((name.split(".")[1], node.lineno))
    return found


def test_every_module_is_in_a_layer():
    assert MODULES, "no modules found"
    assert {layer_of(p) for p in MODULES} <= set(ALLOWED) | {"data"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path: Path):
    own = layer_of(path)
    bad = sorted((line, layer) for layer, line in imported_layers(path)
                 if layer != own and layer not in ALLOWED[own] and layer != "__version__")
    assert not bad, f"{path.relative_to(PACKAGE)} ({own}) imports {bad}; {own} may import only {sorted(ALLOWED[own])}"


def test_the_checker_catches_an_upward_import(tmp_path):
    """The rule is not vacuous: an arm module importing policy, or a relative import, is found."""
    fake = tmp_path / "arm_mod.py"
    fake.write_text("def f():\n    from so101_deploy.policy.drqv2 import PolicyRunner\n\nfrom .safety import x\n")
    assert imported_layers(fake) == {("policy", 2), ("relative", 4)}
