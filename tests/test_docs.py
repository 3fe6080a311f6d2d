"""The README and docs/ agree with the tree: fast, reads text only (no torch import).

    python -m pytest -q tests/test_docs.py

- docs/architecture.md gives every .py file under clo/ exactly one line (`- `path` — what it is`), and every clo/
  path and clo.module named in the README or any docs page exists;
- README.md stays short (at most 220 lines);
- every docs page the README links exists, and every docs page is linked from the README;
- every relative link in README.md and docs/*.md points at an existing file.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "architecture.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
CLO_PATH = re.compile(r"(?<![\w./-])clo/[\w./-]*[\w/]")  # clo/evaluate/store.py, clo/app/ui/, not clo-ko
CLO_MODULE = re.compile(r"(?<![\w./-])clo(?:\.[A-Za-z_]\w*)+")  # clo.evaluate.ratings, clo.train.run.train
ENTRY = re.compile(r"^- `(clo/[\w./-]+\.py)` — \S")


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def code_files() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "clo").rglob("*.py")}


def test_every_file_under_clo_has_exactly_one_line_in_architecture():
    lines = ARCHITECTURE.read_text(encoding="utf-8").splitlines()
    entries = [m.group(1) for m in map(ENTRY.match, lines) if m]
    doubled = sorted({e for e in entries if entries.count(e) > 1})
    assert not doubled, f"docs/architecture.md lists these twice: {doubled}"
    missing = sorted(code_files() - set(entries))
    assert not missing, f"files under clo/ without their line in docs/architecture.md: {missing}"
    gone = sorted(set(entries) - code_files())
    assert not gone, f"docs/architecture.md lists files that do not exist: {gone}"


def is_module(parts: list[str]) -> bool:
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def names_something(parts: list[str]) -> bool:
    """A module, or a name in a module: `clo.CLOError` yes, `clo.votes` (a lowercase name of the package) no."""
    if is_module(parts):
        return True
    return is_module(parts[:-1]) and (len(parts) > 2 or parts[-1][:1].isupper())


def test_every_clo_path_and_module_the_docs_name_exists():
    """`clo/evaluate/store.py` must exist; `clo.train.run` must be a module, `clo.train.run.train` a module's name
    (its last part may be a function or class, which is not checked)."""
    for page in (README, *pages()):
        text = page.read_text(encoding="utf-8")
        named = {m.group(0) for m in CLO_PATH.finditer(text)}
        absent = sorted(p for p in named if not (ROOT / p).exists())
        assert not absent, f"{page.relative_to(ROOT)} names paths that do not exist: {absent}"
        modules = {m.group(0) for m in CLO_MODULE.finditer(text)}
        absent = sorted(m for m in modules if not names_something(m.split(".")))
        assert not absent, f"{page.relative_to(ROOT)} names modules that do not exist: {absent}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 220, f"README.md has {n} lines; move detail to docs/ (at most 220)"


def test_readme_links_every_docs_page_and_only_pages_that_exist():
    targets = {t.split("#")[0] for t in LINK.findall(README.read_text(encoding="utf-8"))}
    linked = {t for t in targets if t.startswith("docs/") and t.endswith(".md")}
    absent = sorted(t for t in linked if not (ROOT / t).is_file())
    assert not absent, f"README.md links docs pages that do not exist: {absent}"
    unlinked = sorted(p.relative_to(ROOT).as_posix() for p in pages())
    unlinked = [p for p in unlinked if p not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_every_relative_link_points_at_a_file():
    for page in (README, *pages()):
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # https:, mailto:, an anchor
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
