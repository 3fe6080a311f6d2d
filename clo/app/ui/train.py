"""Train tab: a form built from the recipe dataclasses, `python -m clo train` as a subprocess, live progress.

The job supervisor is `clo.app.jobs.Jobs`: it runs the command, keeps its state so a reloaded page re-attaches, stops
the process group, hot-loads finished adapters, and checks on the server that the caller may do each of these.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from collections.abc import Callable

import gradio as gr
import pandas as pd

from clo import CLOError
from clo.config import METHODS, SECTIONS, Recipe, base_type
from clo.app.jobs import misfit, taken
from clo.models.table import entry_for, experiments, lookup
from clo.app.context import Services
from clo.app.ui.refusal import refusal

if typing.TYPE_CHECKING:
    from clo.app.ui.judging import JudgePanel
    from clo.app.ui.serving import ServingPanel

# the recipe fields the form shows, in order; their widgets, labels and help come from the dataclasses
FORM = ("model.name_or_path", "data.target_lang", "data.source", "data.pairs", "method.method", "training.max_steps",
        "training.epochs", "lora.r", "model.load_in_4bit", "training.name")


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


def recipe_from_form(values: dict[str, object], hidden: dict[str, object] | None = None) -> Recipe:
    """The recipe of the form's `values` over `hidden` (the served model's training defaults the form has no field
    for, `model_defaults`)."""
    overrides = {k: (",".join(v) if isinstance(v, list) else v) for k, v in values.items() if v not in (None, "")}
    return Recipe.load(overrides=(hidden or {}) | overrides)  # validates every value, with the CLI's messages


def model_defaults(services: Services) -> dict[str, object]:
    """The served offline model's own training defaults (clo.models.table) that the form shows no field for: they
    go into every run started from the form, and its command shows them."""
    entry = entry_for(services.settings.model)
    return {k: v for k, v in (entry.train_defaults if entry else ()) if k not in FORM}


def form_defaults(services: Services) -> Recipe:
    """The form's starting recipe, fitted to the served model: an offline model's own training defaults
    (clo.models.table: a run that visibly teaches within minutes here); one that brings its own data source trains
    that source's language on it; another trains the first language with examples; the adapter name is one not yet
    taken."""
    overrides = {"model.name_or_path": services.settings.model}
    entry = entry_for(services.settings.model)
    overrides |= dict(entry.train_defaults) if entry else {}
    if entry and entry.data_sources:
        overrides |= {"data.target_lang": entry.data_sources[0].language, "data.source": entry.data_sources[0].name}
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
        if not taken(services.settings.adapters_dir, dataclasses.replace(recipe, training=candidate)):
            return candidate.name
    return recipe.training.name


SERIES = {"loss": "loss", "l_sft": "L_SFT", "l_cl": "L_CL", "tgt/margin": "margin x_l", "en/margin": "margin x_en"}


def progress(events: list[dict]) -> tuple[str, pd.DataFrame]:
    """The status line and the curves of the adapter training now (a run trains one adapter per method in turn;
    an experiment, one per size and seed): the same few series names every time, so the chart's legend never
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


def evaluation_status(tail: str, running: bool) -> str:
    """An evaluation job's status line: its last progress line while it runs, where its results went once done."""
    said = [line.strip() for line in tail.splitlines() if line.startswith(("[clo]", "error:"))]
    if running:
        return f"evaluating… {said[-1].removeprefix('[clo] ') if said else 'loading the model'}"
    if said and said[-1].startswith("error:"):
        return f"the evaluation failed: {said[-1].removeprefix('error: ')}"
    return "**Finished**: the scores are under the Leaderboard's Benchmarks"


@dataclasses.dataclass(frozen=True)
class TrainTab:
    """What `build` hands the page (clo.app.ui.build_app) to wire to the gate and to the page's load."""
    panel: gr.Column  # the form, the Serving and judge panels: shown once the session may train
    timer: gr.Timer  # polls the job, only while an admin has the tab open
    on_preview: Callable  # the form's values -> the command that will run
    inputs: list  # the form's widgets, in FORM order
    preview: gr.Code  # where that command is shown
    name: gr.Textbox  # the adapter-name field: a page opened later proposes a name free then (`fresh_name`)
    fresh_name: Callable  # the form's values -> the first free adapter name for them
    serving: "ServingPanel"  # the Serving panel: its language, refresh and outputs
    judge: "JudgePanel"  # the LLM judge panel: its refresh and outputs


def build(services: Services, visible: bool = True) -> TrainTab:
    from clo.app.ui import judging, serving

    jobs = services.jobs
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
        upload = gr.File(label="…or upload a JSONL of English pairs (prompt_en / response_en)", file_types=[".jsonl"],
                         height=90)
        preview = gr.Code(label="The command that will run", language="shell", wrap_lines=True, lines=2, max_lines=8)
        with gr.Row():
            start = gr.Button("Start", variant="primary")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown(elem_id="train-status")
        plot = gr.LinePlot(x="step", y="value", color="series", label="loss, L_SFT, L_CL, margins (the adapter training now)",
                           elem_id="loss-plot")
        with gr.Accordion("The run's log", open=False):
            tail = gr.Code(label="Log", language=None, wrap_lines=True, lines=4, max_lines=20)
        serving_panel = serving.build(services)
        judge_panel = judging.build(services)
        with gr.Accordion("Benchmarks: score the served variants (lm-evaluation-harness)", open=False):
            gr.Markdown("Reading comprehension and reasoning in the target language and in English, each variant on "
                        "the same items. `smoke` is a small offline task (ko, sw, en); the real ones (e.g. "
                        "`belebele_kor_Hang,belebele_eng_Latn`, or a language code for its default set) need the "
                        "hub. An adapter that changes nothing is reported as such, never scored. Scores go to the "
                        "Leaderboard's Benchmarks.")
            with gr.Row():
                bench_variants = gr.CheckboxGroup(list(services.engine.variants()), value=list(services.engine.variants()),
                                                  label="Variants", elem_id="bench-variants", scale=3)
                bench_tasks = gr.Textbox("smoke", label="Tasks", elem_id="bench-tasks", scale=2)
                bench_limit = gr.Number(20, precision=0, minimum=1, label="Items per task (limit)", scale=1)
            bench_start = gr.Button("Evaluate", elem_id="bench-start")
        runs = {}  # the experiments the offline models bring (clo.models.table): name -> (button, summary, plot)
        for entry in experiments():
            with gr.Accordion(entry.experiment.title, open=False):
                gr.Markdown(entry.experiment.about)
                runs[entry.name] = (gr.Button(entry.experiment.button), gr.Markdown(),
                                    gr.Image(label="CLO vs SFT by data size", type="filepath", interactive=False))
    timer = gr.Timer(2, active=False)  # polls only on an admin's page, with the Train tab open and a job there
    keys = list(widgets)
    hidden = model_defaults(services)

    def values_of(args) -> dict:
        return dict(zip(keys, args))

    def on_upload(file, request: gr.Request):
        if file is None:
            return gr.update()
        try:
            return jobs.upload(request, file if isinstance(file, str) else file.name)
        except CLOError as e:
            raise refusal(e) from None

    def on_preview(*args):
        try:
            recipe = recipe_from_form(values_of(args), hidden)
        except CLOError as e:
            return f"# {e}"
        flags = " ".join(f"--{k} {shlex.quote(','.join(v) if isinstance(v, list) else str(v))}"
                         for k, v in (hidden | values_of(args)).items() if v not in (None, ""))
        warning = misfit(recipe, services.settings.model)
        if clash := taken(services.settings.adapters_dir, recipe):  # a page left open while another run took it
            warning = (f"an adapter named {clash!r} exists already, so Start will refuse this name; "
                       f"{free_name(services, recipe)!r} is free")
        return (f"python -m clo train {flags}\n# = {', '.join(recipe.adapter_name(m) for m in recipe.method.method)}"
                + (f"\n# warning: {warning}" if warning else ""))

    def on_start(request: gr.Request, *args):  # the request first: Gradio passes it by position
        try:
            job = jobs.start(request, recipe_from_form(values_of(args), hidden))
        except CLOError as e:
            raise refusal(e) from None
        return f"started: `{job['command']}`", gr.Timer(active=True)

    def on_stop(request: gr.Request):
        try:
            return f"training {jobs.stop(request)}; no adapter was written"
        except CLOError as e:
            raise refusal(e) from None

    def on_evaluate(request: gr.Request, variants, tasks, limit):
        try:
            job = jobs.start_evaluation(request, list(variants or []), tasks, int(limit) if limit else None)
        except CLOError as e:
            raise refusal(e) from None
        return f"started: `{job['command']}`", gr.Timer(active=True)

    def experiment_starter(name: str):
        def on_experiment_start(request: gr.Request):
            try:
                job = jobs.start_experiment(request, name)
            except CLOError as e:
                raise refusal(e) from None
            return f"started: `{job['command']}`", "", None, gr.Timer(active=True)
        return on_experiment_start

    unchanged = [gr.update()] * len(serving_panel.outputs)

    def next_name(args) -> dict:
        try:
            return gr.update(value=free_name(services, recipe_from_form(values_of(args), hidden)))
        except CLOError:
            return gr.update()

    def on_tick(request: gr.Request, serving_code, *form):  # the request first: Gradio passes it by position
        try:
            added = jobs.hot_load(request)  # loads what the job finished: admins only, like every change
        except CLOError as e:
            raise refusal(e) from None
        events = jobs.events()
        if not events and not jobs.current():  # no job: stop polling until one starts
            return [gr.update()] * (4 + 2 * len(runs)) + unchanged + [gr.Timer(active=False)]
        if (jobs.current() or {}).get("kind") == "evaluate":  # no curve: its progress lines, then where it stored
            running = jobs.running()
            return ([evaluation_status(jobs.tail(), running), gr.update(), jobs.tail()] + [gr.update()] * (1 + 2 * len(runs))
                    + unchanged + [gr.update() if running else gr.Timer(active=False)])
        text, frame = progress(events)
        result = jobs.result()
        finished = not jobs.running() and (result or any(e["event"] == "done" for e in events))
        if not jobs.running() and any(e["event"] == "stopped" for e in events):
            text = "stopped; no adapter was written"
        elif finished and (job := jobs.current() or {}).get("experiment") in runs:
            replaced = lookup(job["experiment"]).experiment.replaces_served(services.settings.model)
            text += ("\n\n**Finished**; the served adapters were replaced by this run's" if replaced else
                     "\n\n**Finished**; its table and plot are below")
        elif finished:
            names = ", ".join(f"`{n}`" for n in jobs.loaded_names())
            text += (f"\n\n**Finished**: {names} loaded and listed under Serving below. Compare and Arena serve it "
                     "only once you choose it there.")
        shown = (jobs.current() or {}).get("experiment")  # an experiment's table and plot go under its own button
        results = [part for name in runs for part in (result if result and name == shown else (gr.update(), gr.update()))]
        # a new adapter took its name: the form moves on to a free one, and the Serving lists show the new adapter
        fresh = [next_name(form)] + serving_panel.refresh(serving_code) if added else [gr.update()] + unchanged
        return [text, frame, jobs.tail()] + results + fresh + [gr.update()]

    inputs = [widgets[k] for k in keys]
    upload.change(on_upload, upload, widgets["data.source"], api_visibility="private")
    for w in inputs:
        w.change(on_preview, inputs, preview, api_visibility="private")
    start.click(on_start, inputs, [status, timer], api_visibility="private")
    stop.click(on_stop, None, status, api_visibility="private")
    bench_start.click(on_evaluate, [bench_variants, bench_tasks, bench_limit], [status, timer], api_visibility="private")
    for name, (button, summary, image) in runs.items():
        button.click(experiment_starter(name), None, [status, summary, image, timer], api_visibility="private")
    timer.tick(on_tick, [serving_panel.lang, *inputs], [status, plot, tail, *[p for r in runs.values() for p in r[1:]],
                                                  widgets["training.name"], *serving_panel.outputs, timer],
               api_visibility="private", show_progress="hidden", concurrency_id="poll")
    return TrainTab(panel=panel, timer=timer, on_preview=on_preview, inputs=inputs, preview=preview,
                    name=widgets["training.name"], fresh_name=lambda *args: next_name(args),
                    serving=serving_panel, judge=judge_panel)
