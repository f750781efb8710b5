"""The package's import graph, read from the source (every import that runs, also those inside functions; not
those for type checkers): the tuner imports nothing outside itself, and no chain of imports between peft_grow's
modules comes back to where it started."""

import ast
from pathlib import Path

import peft_grow

PACKAGE = Path(peft_grow.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The peft_grow modules `path` imports, resolved to module names (a name imported from a package counts as
    the package, or as its submodule where one of that name exists)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for block in ast.walk(tree):  # imports for type checkers only never run
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "peft_grow"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "peft_grow":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in MODULES else target)
    return found - {here}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_the_tuner_imports_nothing_outside_itself():
    outside = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.startswith("peft_grow.tuner")
        for target in targets
        if not target.startswith("peft_grow.tuner")
    }
    assert outside == set()


def test_no_module_imports_itself_through_others():
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            name, path = stack.pop()
            for target in GRAPH.get(name, ()):
                if target == start:
                    return [*path, start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
        return None

    cycles = [cycle for name in sorted(GRAPH) if (cycle := cycle_from(name)) is not None]
    assert cycles == []


def test_the_graph_reader_sees_imports_inside_functions_and_skips_type_checking_ones():
    """The checks above could pass by reading too little, or fail by reading too much."""
    assert "peft_grow.training.sft" in GRAPH["peft_grow.training"]  # imported inside __getattr__
    assert "peft_grow.analysis.planning" not in GRAPH["peft_grow.cli.render"]  # for type checkers only
    assert "peft_grow.tuner.config" in GRAPH["peft_grow.io"]
