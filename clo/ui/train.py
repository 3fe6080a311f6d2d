"""Train tab: a form built from the recipe dataclasses, `python -m clo train` as a subprocess, live progress.

The run outlives the page: its state is a small JSON file next to its log, so a reloaded page re-attaches.
Stop ends the whole process group. A finished adapter is hot-loaded into the serving engine.
"""

from __future__ import annotations

import dataclasses
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
import typing
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from clo import CLOError
from clo.config import METHODS, SECTIONS, Recipe, base_type
from clo.files import atomic_write
from clo.ui.services import ROOT, ZERO_GPU, Services, is_miniature, on_gpu

# the recipe fields the form shows, in order; their widgets, labels and help come from the dataclasses
FORM = ("model.name_or_path", "data.target_lang", "data.source", "data.pairs", "method.method", "training.max_steps",
        "training.epochs", "lora.r", "model.load_in_4bit", "training.name")
RUNS = Path("runs") / "ui"
UPLOADS = Path("uploads")


def field_of(dotted: str) -> dataclasses.Field:
    section, name = dotted.split(".")
    return next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)


def widget(dotted: str, default) -> gr.components.Component:
    f = field_of(dotted)
    tp, _ = base_type(f)
    label = f.metadata.get("label") or dotted.split(".")[1].replace("_", " ").capitalize()
    info = f.metadata["help"]
    if dotted == "method.method":
        return gr.CheckboxGroup(list(METHODS), value=default, label=label, info=info)
    if f.metadata.get("choices"):
        return gr.Dropdown(list(f.metadata["choices"]), value=default, label=label, info=info)
    if tp is bool:
        return gr.Checkbox(value=default, label=label, info=info)
    if tp in (int, float):
        return gr.Number(value=default, label=label, info=info, precision=0 if tp is int else None)
    if typing.get_origin(tp) is list:
        return gr.Textbox(value=",".join(default), label=label, info=info)
    return gr.Textbox(value=default, label=label, info=info)


def recipe_from_form(values: dict[str, object]) -> Recipe:
    overrides = {k: (",".join(v) if isinstance(v, list) else v) for k, v in values.items() if v not in (None, "")}
    return Recipe.load(overrides=overrides)  # validates every value, with the CLI's messages


def form_defaults(services: Services) -> Recipe:
    """The form's starting recipe, fitted to the served model: the miniature trains its own language on its own
    data; a real model trains the first language with examples; the adapter name is one not yet taken."""
    from clo.miniature.world import CODE

    overrides = {"model.name_or_path": services.settings.model}
    if is_miniature(services.settings.model):
        overrides |= {"data.target_lang": CODE, "data.source": "miniature"}
    elif services.examples:
        overrides["data.target_lang"] = next(iter(services.examples))
    recipe = Recipe.load(overrides=overrides)
    recipe.training.name = free_name(services, recipe)
    return recipe


def free_name(services: Services, recipe: Recipe) -> str:
    """The recipe's adapter-name pattern, or the same with the first suffix -2, -3, … whose adapters are not taken."""
    stem = re.sub(r"-\d+$", "", recipe.training.name)
    for k in range(1, 1000):
        candidate = dataclasses.replace(recipe.training, name=stem if k == 1 else f"{stem}-{k}")
        if not taken(services, dataclasses.replace(recipe, training=candidate)):
            return candidate.name
    return recipe.training.name


def taken(services: Services, recipe: Recipe) -> str | None:
    """The first adapter name this recipe would write that exists already, else None."""
    return next((name for name in map(recipe.adapter_name, recipe.method.method)
                 if (Path(services.settings.adapters_dir) / name).exists()), None)


def misfit(recipe: Recipe, services: Services) -> str | None:
    """Why this recipe's adapter could not be served by this app, or None when it fits."""
    from clo.engines.base import same_model
    from clo.miniature.world import CODE

    model = recipe.model.name_or_path
    if is_miniature(model) and recipe.data.target_lang != CODE:
        return (f"the miniature's word-level tokenizer knows only English and its invented language: train it with "
                f"target language {CODE!r} and data 'miniature', not {recipe.data.target_lang!r}")
    if not same_model(model, services.settings.model):
        return f"this app serves {services.settings.model}; an adapter trained on {model} could not be served here"
    return None


def command(recipe_path: Path) -> list[str]:
    return [sys.executable, "-m", "clo", "train", "--config", str(recipe_path)]


class Jobs:
    """At most one training subprocess; its state lives in runs/ui/job.json so any page can re-attach."""

    def __init__(self, services: Services):
        self.services = services
        self.state_file = RUNS / "job.json"
        self.loaded: set[str] = set()
        self.proc: subprocess.Popen | None = None
        self.thread = None  # ZeroGPU: the in-process run
        self.claim = threading.Lock()

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

    def start(self, recipe: Recipe) -> dict:
        with self.claim:  # checking that no job runs and starting one are one step: two Starts cannot both pass
            return self._start(recipe)

    def _start(self, recipe: Recipe) -> dict:
        self._check_idle()
        why = misfit(recipe, self.services)
        if why:
            raise CLOError(why)
        name = None if recipe.training.overwrite else taken(self.services, recipe)
        if name:
            raise CLOError(f"an adapter named {name!r} exists already: choose another adapter name")
        if ZERO_GPU:  # the GPU exists only inside spaces.GPU calls of this process: train here, in a thread
            return self._start_in_process(recipe)
        folder = self._new_folder()
        recipe.training.runs_dir = str(folder)
        recipe.training.adapters_dir = self.services.settings.adapters_dir
        recipe.save(folder / "recipe.yaml")
        return self._launch(command(folder / "recipe.yaml"), folder, "train")

    def start_miniature(self, options: list[str] = ()) -> dict:
        """`python -m clo miniature [options]` (SFT vs CLO by data size); when the app serves the miniature, its
        adapters are replaced by the new run's and reloaded at the end."""
        with self.claim:
            return self._start_miniature(options)

    def _start_miniature(self, options: list[str]) -> dict:
        self._check_idle()

        folder = self._new_folder()
        cmd = [sys.executable, "-m", "clo", "miniature", "--out-dir", str(folder), *options]
        if is_miniature(self.services.settings.model):
            cmd += ["--base-path", self.services.settings.model, "--app-adapters", self.services.settings.adapters_dir]
        else:
            cmd += ["--no-app-adapters"]
        return self._launch(cmd, folder, "miniature")

    def _check_idle(self) -> None:
        if self.running():
            raise CLOError("a run is already going: wait for it or stop it first")

    @staticmethod
    def _new_folder() -> Path:
        folder = RUNS / (time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4])
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _launch(self, cmd: list[str], folder: Path, kind: str) -> dict:
        out = open(folder / "output.log", "w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        job = {"id": folder.name, "kind": kind, "pid": proc.pid, "pid_started": process_started(proc.pid),
               "folder": str(folder), "command": shlex.join(cmd), "started": time.time()}
        atomic_write(self.state_file, json.dumps(job))
        return job

    def _start_in_process(self, recipe: Recipe) -> dict:
        import threading

        from clo.train import train

        folder = self._new_folder()
        recipe.training.runs_dir, recipe.training.adapters_dir = str(folder), self.services.settings.adapters_dir
        self.thread = threading.Thread(target=on_gpu(train, duration=600), args=(recipe,), daemon=True)
        self.thread.start()
        job = {"id": folder.name, "kind": "train", "pid": os.getpid(), "pid_started": process_started(os.getpid()),
               "folder": str(folder), "command": "clo.train.train (in process, ZeroGPU)", "started": time.time()}
        atomic_write(self.state_file, json.dumps(job))
        return job

    def stop(self) -> str:
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

    def events(self) -> list[dict]:
        job = self.current()
        if not job:
            return []
        # a miniature job has one log per data size and seed: oldest first, each event tagged with its file
        logs = sorted(Path(job["folder"]).rglob("log.jsonl"), key=lambda p: (p.stat().st_mtime, str(p)))
        return [json.loads(line) | {"log": str(log)} for log in logs
                for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def hot_load(self) -> list[str]:
        """Serve every adapter this job finished and the engine does not have yet (for a miniature job: the
        adapters it published for the app, once it has ended)."""
        job = self.current() or {}
        if job.get("kind") == "miniature":
            return self._reload_miniature(job)
        added = []
        for e in self.events():
            if e["event"] == "done" and e["path"] not in self.loaded:
                self.loaded.add(e["path"])
                try:
                    self.services.engine.add_adapter(e["path"])
                except CLOError as err:  # e.g. trained on another base: listed as not served, never a crash
                    added.append(f"{Path(e['path']).name} (not served: {err})")
                    continue
                added.append(Path(e["path"]).name)
        return added

    def loaded_names(self) -> list[str]:
        """The adapters the current job finished (its "done" events), by folder name."""
        return [Path(e["path"]).name for e in self.events() if e["event"] == "done"]

    def _reload_miniature(self, job: dict) -> list[str]:
        if self.running() or job["id"] in self.loaded or not self.result():
            return []
        self.loaded.add(job["id"])
        names = [n for n, a in self.services.engine.adapters.items() if a.path.parent == Path(self.services.settings.adapters_dir).resolve()]
        for name in names:
            self.services.engine.add_adapter(str(self.services.engine.adapters[name].path))
        return names

    def result(self) -> tuple[str, str] | None:
        """(summary markdown, plot path) of a finished miniature job, else None."""
        job = self.current() or {}
        summaries = sorted(Path(job.get("folder", ".")).glob("*/summary.md")) if job.get("kind") == "miniature" else []
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


def upload_jsonl(src: str) -> str:
    """Check an uploaded JSONL of English pairs and copy it into the project's uploads/ folder; returns the copy."""
    from clo.data import read_records

    try:
        rows = list(read_records(Path(src)))
    except CLOError as e:
        raise gr.Error(str(e)) from None
    if not rows or not all(r.get("prompt_en") and r.get("response_en") for _, r in rows):
        raise gr.Error("the upload needs fields prompt_en and response_en on every line")
    UPLOADS.mkdir(exist_ok=True)
    dest = UPLOADS / f"{uuid.uuid4().hex[:8]}.jsonl"
    shutil.copy(src, dest)
    return str(dest)


SERIES = {"loss": "loss", "l_sft": "L_SFT", "l_cl": "L_CL", "tgt/margin": "margin x_l", "en/margin": "margin x_en"}


def progress(events: list[dict]) -> tuple[str, pd.DataFrame]:
    """The status line and the curves of the adapter training now (a run trains one adapter per method in turn;
    a miniature job, one per size and seed): the same few series names every time, so the chart's legend never
    carries an earlier run's names."""
    logs = [e for e in events if e["event"] == "log"]
    if not logs:
        return "waiting for the first step…", pd.DataFrame(columns=["step", "value", "series"])
    last = logs[-1]
    share = last["step"] / max(last["max_steps"], 1)
    bar = "█" * int(share * 30) + "░" * (30 - int(share * 30))
    text = f"`{last['adapter']}` {bar} {share:.0%} · step {last['step']}/{last['max_steps']} · ETA {last['eta']:.0f} s"
    current = [e for e in logs if e["adapter"] == last["adapter"] and e.get("log") == last.get("log")]
    rows = [{"step": e["step"], "value": e[k], "series": name} for e in current for k, name in SERIES.items() if k in e]
    return text, pd.DataFrame(rows, columns=["step", "value", "series"])


def build(services: Services, visible: bool = True):
    from clo.ui import serving

    jobs = Jobs(services)
    defaults = form_defaults(services)
    with gr.Column(visible=visible) as panel:
        widgets = {}
        with gr.Row():
            for dotted in FORM[:5]:
                section, name = dotted.split(".")
                widgets[dotted] = widget(dotted, getattr(getattr(defaults, section), name))
        with gr.Row():
            for dotted in FORM[5:]:
                section, name = dotted.split(".")
                widgets[dotted] = widget(dotted, getattr(getattr(defaults, section), name))
        upload = gr.File(label="…or upload a JSONL of English pairs (prompt_en / response_en)", file_types=[".jsonl"])
        preview = gr.Code(label="The command that will run", language="shell", wrap_lines=True)
        with gr.Row():
            start = gr.Button("Start", variant="primary")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown(elem_id="train-status")
        plot = gr.LinePlot(x="step", y="value", color="series", label="loss, L_SFT, L_CL, margins (the adapter training now)",
                           elem_id="loss-plot")
        tail = gr.Code(label="Log", language=None, wrap_lines=True)
        serving_lang, serving_form, serving_refresh, serving_outputs = serving.build(services)
        with gr.Accordion("The paper in miniature: SFT vs CLO on a synthetic language, on CPU", open=False):
            gr.Markdown(
                "Runs `python -m clo miniature`: an English-centric miniature base (pretrained once, cached) is fine-tuned "
                "with SFT and with CLO on 50, 100, 200 and 400 pairs of an invented language with an exact translation, "
                "and both are checked on held-out tasks in both languages. A few minutes on two CPU cores; "
                "when the app serves the miniature, its served `sft-mini` and `clo-mini` are replaced by the new run's "
                "when it ends (votes on the old and new versions stay apart)."
            )
            mini_start = gr.Button("Run the miniature experiment")
            mini_summary = gr.Markdown()
            mini_plot = gr.Image(label="CLO vs SFT by data size", type="filepath", interactive=False)
    timer = gr.Timer(2, active=False)  # polls only on an admin's page, with the Train tab open and a job there
    keys = list(widgets)

    def values_of(args) -> dict:
        return dict(zip(keys, args))

    def on_upload(file, request: gr.Request):
        if file is None:
            return gr.update()
        try:
            services.require_admin(request)
        except CLOError as e:
            raise gr.Error(str(e)) from None
        return upload_jsonl(file if isinstance(file, str) else file.name)

    def on_preview(*args):
        try:
            recipe = recipe_from_form(values_of(args))
        except CLOError as e:
            return f"# {e}"
        flags = " ".join(f"--{k} {shlex.quote(','.join(v) if isinstance(v, list) else str(v))}" for k, v in values_of(args).items()
                         if v not in (None, ""))
        warning = misfit(recipe, services)
        return (f"python -m clo train {flags}\n# = {', '.join(recipe.adapter_name(m) for m in recipe.method.method)}"
                + (f"\n# warning: {warning}" if warning else ""))

    def on_start(request: gr.Request, *args):  # the request first: Gradio passes it by position
        try:
            services.require_admin(request)
            job = jobs.start(recipe_from_form(values_of(args)))
        except CLOError as e:
            raise gr.Error(str(e)) from None
        return f"started: `{job['command']}`", gr.Timer(active=True)

    def on_stop(request: gr.Request):
        try:
            services.require_admin(request)
            return f"training {jobs.stop()}; no adapter was written"
        except CLOError as e:
            raise gr.Error(str(e)) from None

    def on_mini_start(request: gr.Request):
        try:
            services.require_admin(request)
            job = jobs.start_miniature()
        except CLOError as e:
            raise gr.Error(str(e)) from None
        return f"started: `{job['command']}`", "", None, gr.Timer(active=True)

    unchanged = [gr.update()] * len(serving_outputs)

    def next_name(args) -> dict:
        try:
            return gr.update(value=free_name(services, recipe_from_form(values_of(args))))
        except CLOError:
            return gr.update()

    def on_tick(serving_code, *form):
        events = jobs.events()
        if not events and not jobs.current():  # no job: stop polling until one starts
            return [gr.update()] * 6 + unchanged + [gr.Timer(active=False)]
        text, frame = progress(events)
        added = jobs.hot_load()
        result = jobs.result()
        finished = not jobs.running() and (result or any(e["event"] == "done" for e in events))
        if not jobs.running() and any(e["event"] == "stopped" for e in events):
            text = "stopped; no adapter was written"
        elif finished and (jobs.current() or {}).get("kind") == "miniature":
            text += "\n\n✅ finished; the served miniature adapters were replaced by this run's"
        elif finished:
            names = ", ".join(f"`{n}`" for n in jobs.loaded_names())
            text += (f"\n\n✅ finished: {names} loaded and listed under Serving below. Compare and Arena serve it "
                     "only once you choose it there.")
        summary, image = result if result else (gr.update(), gr.update())
        # a new adapter took its name: the form moves on to a free one, and the Serving lists show the new adapter
        fresh = [next_name(form)] + serving_refresh(serving_code) if added else [gr.update()] + unchanged
        return [text, frame, jobs.tail(), summary, image] + fresh + [gr.update()]

    inputs = [widgets[k] for k in keys]
    upload.change(on_upload, upload, widgets["data.source"], api_visibility="private")
    for w in inputs:
        w.change(on_preview, inputs, preview, api_visibility="private")
    start.click(on_start, inputs, [status, timer], api_visibility="private")
    stop.click(on_stop, None, status, api_visibility="private")
    mini_start.click(on_mini_start, None, [status, mini_summary, mini_plot, timer], api_visibility="private")
    timer.tick(on_tick, [serving_lang, *inputs], [status, plot, tail, mini_summary, mini_plot, widgets["training.name"],
                                                  *serving_outputs, timer],
               api_visibility="private", show_progress="hidden", concurrency_id="poll")
    return panel, timer, on_preview, inputs, preview, serving_lang, serving_refresh, serving_outputs
