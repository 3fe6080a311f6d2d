"""The package's shape: no import cycle among clo/'s module-level imports, and help that imports nothing heavy.

    python -m pytest tests/test_structure.py        # ~10 s: an AST walk, and one subprocess that asks every --help

The cycle test reads every module's source (nothing is imported): `import X` and `from X import name` at module level
(in `if`, `try`, `with` and class bodies too, not in functions or `if TYPE_CHECKING:`) are edges; `from X import name`
points at X.name when that is a module, else at X; a package's __init__ is its own node. A cycle fails the test with
its path. The help test runs `--help` of `python -m clo` and of every subcommand in one fresh interpreter, then checks
that none of torch, transformers, vllm, gradio was imported (STYLE.md habit 16: help is instant).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "vllm", "gradio")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module):
    """The Import / ImportFrom nodes run when the module is imported (not those in functions or TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            stack += ([] if _type_checking(node.test) else node.body) + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, (ast.With, ast.ClassDef)):
            stack += node.body


def import_graph(root: Path = ROOT, package: str = "clo") -> dict[str, set[str]]:
    """{module: the modules of `package` it imports at module level}, read from the source under root/package."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # the package relative imports start at
        edges = set()
        for node in module_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
                continue
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                if target in files:
                    edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def test_no_import_cycle_among_module_level_imports():
    graph = import_graph(ROOT)
    assert "clo.__main__" in graph and "clo.config" in graph["clo.cli"], "the walk found clo/ and its imports"
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:  # its second argument is the cycle's path, first module repeated at the end
        pytest.fail("import cycle among clo/'s module-level imports: " + " -> ".join(e.args[1]))


def test_the_cycle_check_sees_a_cycle():
    graph = {"clo.a": {"clo.b"}, "clo.b": {"clo.c"}, "clo.c": {"clo.a"}, "clo.d": set()}
    with pytest.raises(CycleError):
        TopologicalSorter(graph).prepare()


HELP_SCRIPT = r"""
import argparse, contextlib, io, json, sys
from clo.__main__ import build_parser

def commands(parser, path=()):
    yield list(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))

parser = build_parser()
asked = []
for argv in commands(parser):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            parser.parse_args([*argv, "--help"])
            code = "no exit"
        except SystemExit as e:
            code = e.code
    asked.append([" ".join(argv), code, "usage:" in out.getvalue()])
print(json.dumps({"asked": asked, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def help_imports(root: Path = ROOT) -> dict:
    """--help of `python -m clo` and of every subcommand, in one fresh interpreter: what was asked, and which heavy
    modules it imported."""
    script = f"HEAVY = {HEAVY!r}\n{HELP_SCRIPT}"
    r = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_help_imports_no_torch_transformers_vllm_gradio():
    found = help_imports(ROOT)
    asked = {name: (code, usage) for name, code, usage in found["asked"]}
    for name in ("", "prepare", "train", "generate", "votes export", "leaderboard", "judge", "miniature", "replicate",
                 "space build", "models", "tiny", "langid"):
        assert asked.get(name) == (0, True), f"python -m clo {name} --help: {asked.get(name)}"
    assert not found["heavy"], f"--help imported {', '.join(found['heavy'])}: import it inside the function that needs it"
