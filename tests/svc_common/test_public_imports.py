"""No module outside the tests imports an underscore name from a dependency (the standard library's
included): what a library keeps private may change in any release."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The project's own top-level packages: their underscore names are ours to use.
OWN = {
    "svc_common",
    "users",
    "orders",
    "user_service",
    "order_service",
    "mesh_rehearsal",
    "bench",
    "testsupport",
    "tests",
}


def production_modules():
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        parts = relative.parts
        if parts[0].startswith(".") or "tests" in parts or parts[0] == "testsupport":
            continue
        yield relative


def private_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names = []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            modules, names = [node.module or ""], [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            if module.split(".")[0] in OWN:
                continue
            private = [part for part in module.split(".") if part.startswith("_")]
            private += [name for name in names if name.startswith("_")]
            if private:
                yield f"line {node.lineno}: {module} {private}"


def test_no_production_module_imports_a_private_name_of_a_dependency():
    found = {}
    for relative in production_modules():
        imports = list(private_imports(ast.parse((ROOT / relative).read_text(), str(relative))))
        if imports:
            found[relative.as_posix()] = imports
    assert found == {}


def test_the_check_finds_one():
    tree = ast.parse("import _socket\nfrom opentelemetry.util._decorator import x\nfrom json import _default_decoder\n")
    assert len(list(private_imports(tree))) == 3
    assert list(private_imports(ast.parse("from svc_common.x import _own\nimport socket\n"))) == []
