"""The app's job supervisor: one training run at a time, as a subprocess that outlives the page.

    jobs = Jobs(model="models/tiny", adapters_dir="adapters", engine=engine, access=access)
    jobs.start(request, recipe)      # `python -m clo train --config runs/ui/<id>/recipe.yaml`
    jobs.start_experiment(request, "miniature")   # an offline model's experiment (clo.models.table), e.g. `python -m clo miniature`
    jobs.start_evaluation(request, ["base", "clo-ko"], "smoke", limit=20)   # `python -m clo evaluate`, stored on its end
    jobs.events(); jobs.tail()       # the run's JSONL log and output, for any page (a reload re-attaches)
    jobs.hot_load(request)           # serve the adapters it finished
    jobs.stop(request)               # SIGTERM to the process group, SIGKILL after 10 s

Every call that changes state takes the caller first and asks `clo.app.access.Access` itself, so the lock holds under
every client (the page, gradio_client, raw HTTP). A recipe from the web may read only the served model and data
that is an upload, a shipped source, a hub id or a file under the project's uploads/ or data/ folders; any other
path gets one message, the same whether or not it exists. An upload is checked before it is kept: at most
`max_upload_mb` (CLO_MAX_UPLOAD_MB, default 20, checked before it is opened) and `max_upload_rows` (CLO_MAX_UPLOAD_ROWS,
default 50,000; a .jsonl's lines are counted before it is parsed, stopping at the limit), prompt_en and response_en
on every row; it is stored under its content's hash (the same file uploaded twice is kept once) and uploads/ keeps
the newest KEEP_UPLOADS of the app's uploads. A refused upload leaves nothing there. The job's state is
runs/ui/job.json, written atomically, with the process's start time: after a restart a stored pid is trusted only if
it is still that process.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from clo import CLOError, ROOT
from clo.app.access import Access
from clo.config import Recipe
from clo.files import atomic_path, atomic_write
from clo.hub import HUB_ID
from clo.models.table import DATA_SOURCES, entry_for, experiments, lookup

RUNS = Path("runs") / "ui"
UPLOADS = Path("uploads")
DATA = Path("data")  # the project's own data folder: files a speaker placed there may be trained on from the web
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".ndjson")
ZERO_GPU = bool(os.environ.get("SPACES_ZERO_GPU"))  # set on Hugging Face ZeroGPU Spaces
MAX_UPLOAD_MB = 20.0  # one upload's size limit (CLO_MAX_UPLOAD_MB); the paper's runs use a few thousand pairs
MAX_UPLOAD_ROWS = 50_000  # one upload's row limit (CLO_MAX_UPLOAD_ROWS)
KEEP_UPLOADS = 20  # uploads/ keeps the app's newest this many uploads (a re-upload counts as new); older ones go
UPLOAD_NAME = re.compile(r"^[0-9a-f]{8,64}\.(jsonl|ndjson|json|csv)$")  # what upload() names a file (older: 8 hex)


def on_gpu(fn, duration: int = 60):
    """`spaces.GPU` on a ZeroGPU Space, where the GPU exists only inside such calls; a no-op elsewhere."""
    if not ZERO_GPU:
        return fn
    import spaces

    return spaces.GPU(duration=duration)(fn)


def _train_in_worker(recipe: Recipe, log: str, parent: int) -> str:
    """Runs inside spaces.GPU's forked worker: the run, its printed lines into `log` (as a subprocess run's go to
    its output.log; only in a fork, where no other thread prints), and its outcome as one line. A refusal comes
    back as its sentence: spaces returns only the class name of an exception other than a gr.Error."""
    import contextlib

    from clo.train.run import train

    with open(log, "a", encoding="utf-8", buffering=1) as out, contextlib.ExitStack() as stack:
        if os.getpid() != parent:  # in the fork nothing else prints; in the app's own process it would take its output
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(out))
        try:
            written = train(recipe)
        except CLOError as e:
            return f"error: {e}"
    return "done: " + ", ".join(str(p) for p in written)


def _is_experiment(job: dict) -> bool:
    return bool(job) and job.get("kind") not in ("train", "evaluate")  # older job files have no "experiment" name


BENCH_DB = "benchmarks.db"  # an evaluation job's own results, copied into the app's vote store when it has ended


def command(recipe_path: Path) -> list[str]:
    return [sys.executable, "-m", "clo", "train", "--config", str(recipe_path)]


def data_source_names() -> tuple[str, ...]:
    """The data sources the library names: the shipped sample, and those the offline models bring (clo.models.table)."""
    return ("sample", *sorted(DATA_SOURCES))


def web_data_source(source: str) -> str:
    """`source` if a visitor may train on it: a named source, a hub dataset id, or a file under uploads/, data/ or
    the shipped assets/. Anything else is refused with one message that does not say whether the path exists."""
    source = (source or "").strip()
    if source in data_source_names():
        return source
    looks_like_hub = bool(HUB_ID.match(source)) and Path(source).suffix.lower() not in DATA_SUFFIXES
    if looks_like_hub and not Path(source).exists():
        return source
    roots = [UPLOADS.resolve(), DATA.resolve(), (ROOT / "assets").resolve()]
    try:
        inside = any(Path(source).resolve().is_relative_to(root) for root in roots)
    except (OSError, ValueError):
        inside = False
    if not inside or "~" in source:
        raise CLOError(f"data {source!r} cannot be used from the web: upload a file, or use "
                       f"{', '.join(repr(n) for n in data_source_names())}, a hub dataset id, or a file under uploads/ or data/")
    return source


def misfit(recipe: Recipe, model: str) -> str | None:
    """Why this recipe's adapter could not be served by an app serving `model`, or None when it fits."""
    from clo.engines.base import same_model

    entry = entry_for(model)  # an offline model may say why it cannot learn this (clo.models.table)
    why = entry.misfit(recipe) if entry else None
    if why:
        return why
    if recipe.model.name_or_path != model and not same_model(recipe.model.name_or_path, model):
        return f"this app serves {model}; an adapter trained on another model could not be served here"
    return None


def taken(adapters_dir: str | Path, recipe: Recipe) -> str | None:
    """The first adapter name this recipe would write that exists already, else None."""
    return next((name for name in map(recipe.adapter_name, recipe.method.method) if (Path(adapters_dir) / name).exists()),
                None)


def process_started(pid: int) -> float | None:
    """When process `pid` started (psutil), None if there is none: with the pid it names one process for good."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, TypeError):
        return None


def same_process(pid, started) -> bool:
    """`pid` is alive and is still the process that started at `started` (not a stranger that reused the pid)."""
    now = process_started(pid) if pid else None
    return now is not None and started is not None and abs(now - float(started)) < 0.01


class Jobs:
    """At most one training subprocess; its state lives in runs/ui/job.json so any page can re-attach."""

    def __init__(self, model: str, adapters_dir: str, engine, access: Access, max_upload_mb: float = MAX_UPLOAD_MB,
                 max_upload_rows: int = MAX_UPLOAD_ROWS, store=None):
        self.model, self.adapters_dir, self.engine, self.access = model, adapters_dir, engine, access
        self.store = store  # where a finished evaluation's results go (the app's vote store)
        self.collecting = threading.Lock()  # the watcher and a page's poll never copy the same rows twice
        self.max_upload_mb, self.max_upload_rows = max_upload_mb, max_upload_rows
        self.state_file = RUNS / "job.json"
        self.loaded: set[str] = set()
        self.proc: subprocess.Popen | None = None
        self.thread = None  # ZeroGPU: the in-process run
        self.claim = threading.Lock()

    # ---- reading (anyone) ----
    def current(self) -> dict | None:
        if not self.state_file.is_file():
            return None
        return json.loads(self.state_file.read_text(encoding="utf-8"))

    def running(self) -> bool:
        if self.thread is not None:
            return self.thread.is_alive()
        if self.proc is not None:  # started by this server: it is our child
            return self.proc.poll() is None
        job = self.current()  # started before a restart of the server: trusted only if it is the same process
        return bool(job) and same_process(job.get("pid"), job.get("pid_started"))

    def events(self) -> list[dict]:
        job = self.current()
        if not job:
            return []
        # an experiment has one log per data size and seed: oldest first, each event tagged with its file
        logs = sorted(Path(job["folder"]).rglob("log.jsonl"), key=lambda p: (p.stat().st_mtime, str(p)))
        return [json.loads(line) | {"log": str(log)} for log in logs
                for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def loaded_names(self) -> list[str]:
        """The adapters the current job finished (its "done" events), by folder name."""
        return [Path(e["path"]).name for e in self.events() if e["event"] == "done"]

    def result(self) -> tuple[str, str] | None:
        """(summary markdown, plot path) of a finished experiment, else None."""
        job = self.current() or {}
        summaries = sorted(Path(job.get("folder", ".")).glob("*/summary.md")) if _is_experiment(job) else []
        if not summaries:
            return None
        return summaries[-1].read_text(encoding="utf-8"), str(summaries[-1].with_name("plot.png"))

    def tail(self, lines: int = 20) -> str:
        job = self.current()
        if not job:
            return ""
        path = Path(job["folder"]) / "output.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    # ---- changing state (admins only, checked here) ----
    def start(self, caller, recipe: Recipe) -> dict:
        self.access.require(caller)
        recipe.data.source = web_data_source(recipe.data.source)
        with self.claim:  # checking that no job runs and starting one are one step: two Starts cannot both pass
            self._check_idle()
            why = misfit(recipe, self.model)
            if why:
                raise CLOError(why)
            name = None if recipe.training.overwrite else taken(self.adapters_dir, recipe)
            if name:
                raise CLOError(f"an adapter named {name!r} exists already: choose another adapter name")
            folder = self._new_folder()
            recipe.training.runs_dir, recipe.training.adapters_dir = str(folder), self.adapters_dir
            if ZERO_GPU:  # the GPU exists only inside spaces.GPU calls of this process: train here, in a thread
                return self._start_in_process(recipe, folder)
            recipe.save(folder / "recipe.yaml")
            return self._launch(command(folder / "recipe.yaml"), folder, "train")

    def start_experiment(self, caller, name: str, options: list[str] = ()) -> dict:
        """The experiment offline model `name` brings (clo.models.table), e.g. `python -m clo miniature [options]`: SFT vs
        CLO by data size; when the app serves that model, its adapters are replaced by the new run's and reloaded at
        the end."""
        self.access.require(caller)
        experiment = lookup(name).experiment
        if experiment is None:
            raise CLOError(f"model {name!r} brings no experiment; those that do: "
                           f"{', '.join(e.name for e in experiments()) or 'none'}")
        with self.claim:
            self._check_idle()
            folder = self._new_folder()
            cmd = [sys.executable, "-m", "clo", experiment.command, "--out-dir", str(folder), *options,
                   *experiment.arguments(self.model, self.adapters_dir)]
            return self._launch(cmd, folder, "experiment", experiment=name)

    def start_evaluation(self, caller, variants: list[str], tasks: str, limit: int | None = None) -> dict:
        """`python -m clo evaluate` on the served model and `variants` (the base and served adapters) over `tasks`
        (a task set such as `smoke`, or comma-separated lm-evaluation-harness task names), at most `limit` items
        per task. It writes into a database of its own in the job's folder (the app's store may be locked to this
        process: clo.evaluate.snapshot), copied into the app's store once it has ended (`hot_load`)."""
        self.access.require(caller)
        if ZERO_GPU:
            raise CLOError("evaluation runs as a separate process, which has no GPU on ZeroGPU: run "
                           "`python -m clo evaluate` on a machine with one and give the app its --db")
        served = self.engine.variants() if self.engine is not None else {}
        unknown = [v for v in variants if v not in served]
        if not variants or unknown:
            raise CLOError(f"choose variants this app serves ({', '.join(served)}), got {', '.join(unknown) or 'none'}")
        tasks = (tasks or "").strip()
        if not tasks or not re.fullmatch(r"[A-Za-z0-9_.,-]+", tasks):
            raise CLOError(f"tasks must be a task set such as smoke, or task names separated by commas, got {tasks!r}")
        if limit is not None and (int(limit) != limit or limit < 1):
            raise CLOError(f"the limit must be a whole number of items per task, at least 1, got {limit}")
        # each as the command names it: a hub adapter by its repo and commit, a folder by its name
        named = [(self.engine.adapters[v].source or v) if v in self.engine.adapters else v for v in variants]
        with self.claim:
            self._check_idle()
            folder = self._new_folder()
            cmd = [sys.executable, "-m", "clo", "evaluate", "--model", self.model, "--adapters-dir", self.adapters_dir,
                   "--adapters", ",".join(named), "--tasks", tasks, "--db", str(folder / BENCH_DB),
                   *(["--limit", str(int(limit))] if limit else [])]
            job = self._launch(cmd, folder, "evaluate", variants=variants)
        proc = self.proc  # its scores reach the store when it ends, whoever has a page open then
        threading.Thread(target=lambda: (proc.wait(), self.collect()), name="clo-evaluate-collect", daemon=True).start()
        return job

    def collect(self) -> int:
        """Copy a finished evaluation's results into the app's store, once; returns how many rows were copied.
        Called when its process ends, and on an admin's poll (a job that ended while the app was down)."""
        with self.collecting:
            return self._collect()

    def _collect(self) -> int:
        job = self.current() or {}
        if job.get("kind") != "evaluate" or self.running() or job["id"] in self.loaded or self.store is None:
            return 0
        self.loaded.add(job["id"])
        source = Path(job["folder"]) / BENCH_DB
        if not source.is_file():
            return 0
        from clo.evaluate.store import open_store

        results = open_store(str(source), read_only=True)
        try:
            rows = results.benchmarks()
        finally:
            results.close()
        have = set(self.store.benchmarks()["run_id"])  # a restarted app collects the last job again: copied once
        rows = rows[~rows["run_id"].isin(have)]
        from clo.evaluate.benchmarks import _row_from

        # one transaction: a copy that fails leaves none of the run's rows, so a restart copies it whole
        return self.store.record_benchmark([_row_from(r) for r in rows.to_dict(orient="records")])

    def stop(self, caller) -> str:
        self.access.require(caller)
        job = self.current()
        if not job or not self.running():
            raise CLOError("nothing is running")
        if self.thread is not None:
            raise CLOError("an in-process ZeroGPU run cannot be stopped; it ends within its GPU time limit")
        os.killpg(job["pid"], signal.SIGTERM)  # clo stops at the next step and writes no adapter
        for _ in range(100):
            if not self.running():
                return "stopped"
            time.sleep(0.1)
        os.killpg(job["pid"], signal.SIGKILL)
        return "killed"

    def hot_load(self, caller) -> list[str]:
        """Serve every adapter this job finished and the engine does not have yet (for an experiment: the
        adapters it published for the app, once it has ended)."""
        self.access.require(caller)
        job = self.current() or {}
        if _is_experiment(job):
            return self._reload_served(job)
        if job.get("kind") == "evaluate":  # no adapter to serve: its results go to the Leaderboard's store
            self.collect()
            return []
        added = []
        for e in self.events():
            if e["event"] == "done" and e["path"] not in self.loaded:
                self.loaded.add(e["path"])
                try:
                    self.engine.add_adapter(e["path"])
                except CLOError as err:  # e.g. trained on another base: listed as not served, never a crash
                    added.append(f"{Path(e['path']).name} (not served: {err})")
                    continue
                added.append(Path(e["path"]).name)
        return added

    def upload(self, caller, src: str, name: str | None = None) -> str:
        """Check an uploaded file of English pairs (`name`: what the visitor called it) and keep it in uploads/ under
        its content's hash; returns that path. A file over the size or row limit, or with a row lacking prompt_en
        or response_en, is refused with one message naming it, and nothing is written."""
        self.access.require(caller)
        path = Path(src)
        shown = name or path.name
        suffix = path.suffix.lower()
        if suffix not in DATA_SUFFIXES:
            raise CLOError(f"{shown}: unsupported file type {suffix!r}; upload a .jsonl, .json or .csv file")
        try:
            size = path.stat().st_size
        except OSError as e:
            raise CLOError(f"the upload {shown} cannot be read ({e.strerror}): upload it again") from None
        if size > self.max_upload_mb * 1e6:
            raise CLOError(f"{shown} is {size / 1e6:,.1f} MB, over the upload limit of {self.max_upload_mb:g} MB "
                           "(CLO_MAX_UPLOAD_MB): upload fewer pairs")
        self._check_rows(path, shown)
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        dest = UPLOADS / f"{digest.hexdigest()[:16]}{suffix}"
        if dest.is_file():  # the same file again: kept once, and now the newest
            os.utime(dest)
        else:
            with atomic_path(dest) as tmp:
                shutil.copyfile(path, tmp)
        self._prune_uploads(keep=dest)
        return str(dest)

    def _check_rows(self, path: Path, shown: str) -> None:
        """At most max_upload_rows rows (a .jsonl's counted as byte lines before parsing, stopping at the limit; a
        .json's or .csv's, which the size limit bounds, as parsed), each with both English fields."""
        from clo.train.data import read_records

        too_many = CLOError(f"{shown} has more than {self.max_upload_rows:,} rows, the upload limit "
                            "(CLO_MAX_UPLOAD_ROWS): upload fewer pairs")
        if path.suffix.lower() in (".jsonl", ".ndjson"):  # count lines as bytes first, stopping at the limit
            with path.open("rb") as fh:
                lines = sum(1 for _ in itertools.islice(filter(bytes.strip, fh), self.max_upload_rows + 1))
            if lines > self.max_upload_rows:
                raise too_many
        rows = 0
        try:
            for where, record in read_records(path):
                rows += 1
                if rows > self.max_upload_rows:  # .json and .csv: counted as parsed
                    raise too_many
                if not all(isinstance(record.get(k), str) and record[k].strip() for k in ("prompt_en", "response_en")):
                    raise CLOError(f"{where}: the upload needs fields prompt_en and response_en on every line")
        except CLOError as e:  # name the file as the visitor knows it, not the server's temporary path
            raise CLOError(str(e).replace(str(path), shown)) from None
        if not rows:
            raise CLOError(f"{shown} is empty: the upload needs fields prompt_en and response_en on every line")

    def _prune_uploads(self, keep: Path) -> None:
        """Delete the app's uploads beyond the newest KEEP_UPLOADS; never `keep` nor the running job's data."""
        job = self.current() if self.running() else None
        recipe = Path(job["folder"]) / "recipe.yaml" if job else None
        in_use = recipe.read_text(encoding="utf-8") if recipe and recipe.is_file() else ""
        ours = [p for p in UPLOADS.iterdir() if UPLOAD_NAME.match(p.name) and p.is_file() and not p.is_symlink()]
        ours.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in ours[KEEP_UPLOADS:]:
            if old.name != keep.name and old.name not in in_use:
                old.unlink(missing_ok=True)

    # ---- inside ----
    def _check_idle(self) -> None:
        if self.running():
            raise CLOError("a run is already going: wait for it or stop it first")

    @staticmethod
    def _new_folder() -> Path:
        folder = RUNS / (time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4])
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _launch(self, cmd: list[str], folder: Path, kind: str, **extra) -> dict:
        out = open(folder / "output.log", "w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        return self._record({"id": folder.name, "kind": kind, "pid": proc.pid, "pid_started": process_started(proc.pid),
                             "folder": str(folder), "command": shlex.join(cmd), "started": time.time(), **extra})

    def _start_in_process(self, recipe: Recipe, folder: Path) -> dict:
        """ZeroGPU: the run inside one spaces.GPU call, made from a thread here. spaces forks a worker from this
        process for it (transformers' Trainer in a fork: it takes none of the engine's locks, and the engine's
        scheduler thread, idle on ZeroGPU, is simply absent there); the adapter and the run log are files, so the
        Train tab reads them as it reads a subprocess run's, and the worker's output and outcome go to output.log."""
        log = folder / "output.log"
        log.touch()

        def run():
            try:
                outcome = on_gpu(_train_in_worker, duration=600)(recipe, str(log), os.getpid())
            except Exception as e:  # noqa: BLE001 (spaces' own failure, e.g. no GPU or quota: the Train tab shows it)
                outcome = f"error: the ZeroGPU run failed: {' '.join(str(e).split())[:300] or type(e).__name__}"
            with open(log, "a", encoding="utf-8") as out:
                out.write(outcome + "\n")

        self.thread = threading.Thread(target=run, name="clo-zerogpu-train", daemon=True)
        self.thread.start()
        return self._record({"id": folder.name, "kind": "train", "pid": os.getpid(), "pid_started": process_started(os.getpid()),
                             "folder": str(folder), "command": "clo.train.run.train (in process, ZeroGPU)", "started": time.time()})

    def _record(self, job: dict) -> dict:
        atomic_write(self.state_file, json.dumps(job))
        return job

    def _reload_served(self, job: dict) -> list[str]:
        """Reload the served adapters an experiment replaced in place (it published into the adapters folder)."""
        if self.running() or job["id"] in self.loaded or not self.result():
            return []
        self.loaded.add(job["id"])
        home = Path(self.adapters_dir).resolve()
        names = [n for n, a in self.engine.adapters.items() if a.path.parent == home]
        for name in names:
            self.engine.add_adapter(str(self.engine.adapters[name].path))
        return names

