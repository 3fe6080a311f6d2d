"""The app, launched for real on a tiny model with two adapters, driven through gradio_client and the Train machinery."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest
from conftest import ROOT, free_port, launch_app, make_adapters

from clo.train.data import SAMPLE

SAMPLE_ROWS = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
SAMPLE_ROW = SAMPLE_ROWS[0]


# `app_url` (one `python app.py` per run, shared with other files that only drive it), `launch_app`, `make_adapters`
# and `free_port` are tests/conftest.py's


@pytest.fixture
def client(app_url):
    from gradio_client import Client

    return Client(app_url[0], verbose=False)


def test_app_says_what_it_runs_on(app_url):
    url, work = app_url
    assert "running on" in (work / "app.log").read_text() and "peft engine" in (work / "app.log").read_text()


def test_compare_returns_one_answer_per_variant(client):
    r = client.predict(SAMPLE_ROW["prompt_ko"], "ko", "", api_name="/compare")
    assert [a["slot"] for a in r["target"]] == ["base", "sft", "clo"]
    assert [a["variant"] for a in r["target"]] == ["base", "sft-ko", "clo-ko"]
    # the example's English original is used for the English side
    assert [a["slot"] for a in r["english"]] == ["base", "sft", "clo"]
    assert all(a["tokens"] > 0 and "language" in a for a in r["target"] + r["english"])
    assert len({a["text"] for a in r["target"]}) == 3


def test_battle_vote_leaderboard(client, app_url):
    b = client.predict("", "ko", api_name="/battle")
    assert set(b) == {"battle_id", "language", "prompt", "english", "answer_a", "answer_b"}
    assert b["english"] == next(r["prompt_en"] for r in SAMPLE_ROWS if r["prompt_ko"] == b["prompt"])
    # nothing but the answers' and the prompt's own text could name a variant (a random model's text may say "base")
    leak = json.dumps({k: v for k, v in b.items() if k not in ("answer_a", "answer_b", "english")})
    assert not any(name in leak for name in ("sft-ko", "clo-ko", "base", "variant", "hash"))
    reveal = client.predict(b["battle_id"], "a", api_name="/vote")
    assert {reveal["variant_a"], reveal["variant_b"]} <= {"base", "sft-ko", "clo-ko"} and reveal["outcome"] == "a"
    with pytest.raises(Exception, match="already has a vote"):
        client.predict(b["battle_id"], "b", api_name="/vote")
    board = client.predict("ko", api_name="/leaderboard")
    assert board["summary"][0]["rated"] >= 1
    assert {row["variant"] for row in board["counts"]} >= {reveal["variant_a"], reveal["variant_b"]}
    assert board["note"].startswith("not enough votes to rate yet") and board["bradley_terry"] == []
    # the vote records the base model served (its folder and fingerprint); the board shows that base by default
    [served] = [b for b in board["bases"] if b["label"].endswith("served now")]
    assert served["key"].startswith("sha256:") and board["bases"][0] == served
    other = client.predict("ko", "models/another-base", api_name="/leaderboard")
    assert other["note"] == "no votes yet" and "summary" not in other  # no votes on a base never served


def test_another_client_cannot_vote_on_my_battle(client, app_url):
    from gradio_client import Client

    b = client.predict("What is 2 + 2?", "ko", api_name="/battle")
    with pytest.raises(Exception, match="belongs to another session"):
        Client(app_url[0], verbose=False).predict(b["battle_id"], "a", api_name="/vote")


@pytest.mark.parametrize("prompt, language, message", [
    ("", "ko", "write a prompt first"),
    ("x" * 50_000, "ko", "the limit is 2,000"),
    ("hello", "xx", "unknown language code"),
    ("hello", "en", "English is the source language"),
])
def test_bad_input_is_a_message(client, prompt, language, message):
    with pytest.raises(Exception, match=message):
        client.predict(prompt, language, "", api_name="/compare")


def test_language_codes_are_normalised(client):
    assert client.predict("hello", "kor", "", api_name="/compare")["language"] == "ko"
    assert client.predict("hello", "KO-kr", "", api_name="/compare")["language"] == "ko"


def test_unknown_outcome_and_battle(client, app_url):
    with pytest.raises(Exception, match="unknown outcome"):
        client.predict("whatever", "left", api_name="/vote")
    with pytest.raises(Exception, match="unknown battle"):
        client.predict("no-such-battle", "a", api_name="/vote")
    # a refusal is one line in the terminal, not a traceback that reads as a crash
    log = (app_url[1] / "app.log").read_text()
    assert "[clo] refused: unknown battle" in log and "Traceback" not in log, log[-3000:]


@pytest.mark.slow
def test_a_taken_port_is_one_line_naming_the_apps_flag(tiny_model, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CLO_MODEL": str(tiny_model),
               "CLO_ENGINE": "peft", "CLO_ADAPTERS_DIR": str(tmp_path / "adapters"), "CLO_DB": str(tmp_path / "votes.db"),
               "CLO_PORT": str(port)}
        r = subprocess.run([sys.executable, str(ROOT / "app.py")], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (f"error: port {port} on 127.0.0.1 is taken (another app is running "
                                                 "there?): choose another with --port N or CLO_PORT=N")
    assert "Traceback" not in r.stderr + r.stdout


# ---- the Train tab's machinery: a real subprocess run, then the adapter is served ----

@pytest.mark.slow
def test_train_job_runs_to_the_end_and_is_hot_loaded(tiny_model, project):
    from clo.config import Recipe
    from clo.app.context import Services
    from clo.app.settings import Settings
    from clo.app.ui.train import progress

    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db"))
    jobs = services.jobs
    with pytest.raises(Exception, match="nothing is running"):
        jobs.stop(None)
    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "method.method": "clo", "data.pairs": 8,
                                    "training.max_steps": 3, "training.max_length": 128, "training.max_prompt_length": 64,
                                    "training.name": "ui-{method}-{lang}"})
    job = jobs.start(None, recipe)
    assert job["command"].endswith(f"train --config {job['folder']}/recipe.yaml")
    with pytest.raises(Exception, match="already going"):
        jobs.start(None, recipe)
    deadline = time.time() + 240
    while jobs.running() and time.time() < deadline:
        time.sleep(0.5)
    assert not jobs.running(), jobs.tail()
    text, frame = progress(jobs.events())
    assert "100%" in text and "step 3/3" in text and not frame.empty
    assert jobs.hot_load(None) == ["ui-clo-ko"]
    assert services.slots("ko")["clo"] is None  # loaded and listed, not promoted: the speaker chooses
    assert services.lineup.candidates("ko", "clo") == ["ui-clo-ko"]
    answers = services.engine.generate(services.requests("안녕하세요", ["base", "ui-clo-ko"]))
    assert len(answers) == 2 and all(a.tokens for a in answers)
    with pytest.raises(Exception, match="an adapter named 'ui-clo-ko' exists already"):
        jobs.start(None, recipe)  # refused at once, not after the subprocess has started
    from clo.app.ui.train import build, free_name

    assert free_name(services, recipe) == "ui-{method}-{lang}-2"
    # a page opened after the run proposes a free name, and the preview of a taken one says Start will refuse it
    with gr.Blocks():
        tab = build(services)
    from clo.app.ui.train import FORM

    values = {k: w.value for k, w in zip(FORM, tab.inputs)}
    values.update({"model.name_or_path": str(tiny_model), "data.target_lang": "ko", "method.method": ["clo"],
                   "training.name": "ui-{method}-{lang}"})
    form = [values[k] for k in FORM]
    assert tab.fresh_name(*form)["value"] == "ui-{method}-{lang}-2"
    said = tab.on_preview(*form)
    assert "# warning: an adapter named 'ui-clo-ko' exists already, so Start will refuse this name" in said, said


def test_the_train_form_fits_the_served_model(tiny_model, project):
    from clo.config import Recipe
    from clo.app.context import Services
    from clo.app.settings import Settings
    from clo.app.jobs import misfit
    from clo.app.ui.train import form_defaults

    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db"))
    make_adapters(tiny_model, project / "adapters")
    recipe = form_defaults(services)
    assert recipe.model.name_or_path == str(tiny_model) and recipe.data.target_lang == "ko"
    assert recipe.adapter_name("clo") == "clo-ko-2"  # clo-ko is taken
    assert misfit(recipe, services.settings.model) is None
    other = Recipe.load(overrides={"model.name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert "could not be served here" in misfit(other, services.settings.model)


def test_the_loss_chart_shows_the_adapter_training_now_under_fixed_series_names():
    from clo.app.ui.train import SERIES, progress

    def logs(adapter, log, steps):
        return [{"event": "log", "adapter": adapter, "log": log, "step": k, "max_steps": steps, "eta": 0, "loss": 1.0 / k,
                 "l_sft": 0.5, "l_cl": 0.6, "tgt/margin": 0.1 * k, "en/margin": 0.2 * k} for k in range(1, steps + 1)]

    first, second = logs("clo-ko", "runs/a/log.jsonl", 3), logs("clo-ko-2", "runs/b/log.jsonl", 2)
    text, frame = progress(first + [{"event": "done", "adapter": "clo-ko", "path": "adapters/clo-ko"}] + second)
    assert "clo-ko-2" in text and "step 2/2" in text
    assert set(frame["series"]) == set(SERIES.values()) and frame["step"].max() == 2 and len(frame) == 2 * len(SERIES)
    assert list(progress([])[1].columns) == ["step", "value", "series"]


@pytest.mark.slow
def test_stop_ends_the_process_tree(tiny_model, project):
    from clo.config import Recipe
    from clo.app.context import Services
    from clo.app.settings import Settings

    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db"))
    jobs = services.jobs
    jobs.start(None, Recipe.load(overrides={"model.name_or_path": str(tiny_model), "method.method": "sft", "data.pairs": 8,
                                      "training.max_steps": 100000, "training.name": "long"}))
    deadline = time.time() + 120
    while not any(e["event"] == "log" for e in jobs.events()) and time.time() < deadline:
        time.sleep(0.3)
    assert jobs.stop(None) in ("stopped", "killed")
    assert not jobs.running()
    assert not (project / "adapters" / "long").exists()


@pytest.mark.parametrize("content, message", [
    ("not json at all\n", "not valid JSON"),
    ('{"prompt": "only one field"}\n', "prompt_en and response_en"),
])
def test_bad_upload_is_a_message(project, content, message):
    from clo import CLOError
    from clo.app.access import Access
    from clo.app.jobs import Jobs

    path = project / "up.jsonl"
    path.write_text(content)
    with pytest.raises(CLOError, match=message):
        Jobs("model", "adapters", None, Access(demo_mode=False)).upload(None, str(path))
    assert not (project / "uploads").exists()


def test_good_upload_is_copied_into_the_project_by_an_admin_only(project):
    from clo import CLOError
    from clo.app.access import Access
    from clo.app.jobs import Jobs

    src = project / "up.jsonl"
    src.write_text(json.dumps({"prompt_en": "Hi", "response_en": "Hello!"}) + "\n")
    access = Access(demo_mode=True, password="pw")
    jobs = Jobs("model", "adapters", None, access)
    with pytest.raises(CLOError, match="admin password"):
        jobs.upload("visitor", str(src))
    assert not (project / "uploads").exists()
    assert access.unlock("speaker", "pw")
    dest = Path(jobs.upload("speaker", str(src)))
    assert dest.parent.name == "uploads" and dest.read_text() == src.read_text()


def test_the_train_form_on_the_miniature_trains_its_own_language(tmp_path):
    from types import SimpleNamespace

    from clo.config import Recipe
    from clo.app.jobs import misfit
    from clo.app.ui.train import form_defaults, widget

    base = tmp_path / "miniature-base"
    base.mkdir()
    (base / "miniature.json").write_text("{}")  # what marks a folder as the miniature's base (its registry entry)
    services = SimpleNamespace(settings=SimpleNamespace(model=str(base), adapters_dir=str(tmp_path / "adapters")),
                               examples={"mini": []})
    recipe = form_defaults(services)
    assert (recipe.data.target_lang, recipe.data.source) == ("mini", "miniature") and misfit(recipe, services.settings.model) is None
    korean = Recipe.load(overrides={"model.name_or_path": str(base)})
    assert "word-level tokenizer" in misfit(korean, services.settings.model)
    assert widget("lora.r", 16).label == "LoRA rank r" and widget("model.load_in_4bit", "auto").label == "4-bit base (QLoRA)"
    # the miniature's own recipe (a run that teaches: L_CL 0.69 -> 0.05 and target fidelity 0/60 -> 60/60 in 22 s,
    # docs/app.md) reaches the run through the form, the fields the form has no widget for included
    from clo.app.ui.train import FORM, model_defaults, recipe_from_form

    hidden = model_defaults(services)
    assert hidden["training.learning_rate"] == 2e-3 and not set(hidden) & set(FORM)
    form = {k: getattr(getattr(recipe, k.split(".")[0]), k.split(".")[1]) for k in FORM}
    run = recipe_from_form(form, hidden)
    assert (run.training.learning_rate, run.training.epochs, run.data.pairs, run.training.batch_size) == (2e-3, 3.0, 400, 8)
    assert recipe_from_form(form | {"data.pairs": 100}, hidden).data.pairs == 100  # the form wins over the model


def test_empty_leaderboard_tables_keep_their_headers_and_numbers_are_rounded():
    import pandas as pd

    from clo.app.ui.leaderboard import shown

    assert list(shown("bradley_terry", None).columns) == ["variant", "rating", "lower", "upper", "battles"]
    assert "win %" in shown("wtl", None).columns
    bt = pd.DataFrame({"variant": ["clo-ko"], "rating": [1123.4567], "lower": [987.654], "upper": [1300.01], "battles": [7]})
    assert shown("bradley_terry", bt).iloc[0]["rating"] == 1123.0
    win = pd.DataFrame([[float("nan"), 2 / 3], [1 / 3, float("nan")]], index=["a", "b"], columns=["a", "b"])
    assert shown("win_rate", win).iloc[0]["b (%)"] == 66.7


@pytest.mark.slow
def test_the_app_listens_where_the_platform_says(tiny_model, tmp_path):
    """A Space sets GRADIO_SERVER_NAME=0.0.0.0: with no --host the app listens there (checked on the socket)."""
    import psutil

    port = free_port()
    # its own launch, not the shared app_url: where it listens is a setting at start (GRADIO_SERVER_NAME)
    proc, _ = launch_app(tiny_model, tmp_path, port=port, CLO_PORT=None, GRADIO_SERVER_NAME="0.0.0.0",
                         GRADIO_SERVER_PORT=str(port))
    try:
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert ("0.0.0.0", port) in listening, listening
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_stored_job_of_a_stranger_is_not_trusted(tiny_model, project):
    """After a restart the job file names a pid; a live process that reused it is not our job, and Stop leaves it."""
    from clo.files import atomic_write
    from clo.app.context import Services
    from clo.app.settings import Settings
    from clo.app.jobs import RUNS, Jobs, process_started

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db"))
        RUNS.mkdir(parents=True)
        job = {"id": "old", "kind": "train", "pid": stranger.pid, "pid_started": process_started(stranger.pid) - 3600,
               "folder": str(RUNS / "old"), "command": "python -m clo train", "started": 0}
        atomic_write(RUNS / "job.json", json.dumps(job))
        jobs = services.jobs
        assert not jobs.running()
        with pytest.raises(Exception, match="nothing is running"):
            jobs.stop(None)
        assert stranger.poll() is None  # never signalled
        atomic_write(RUNS / "job.json", json.dumps(job | {"pid_started": process_started(stranger.pid)}))
        assert Jobs(services.settings.model, "adapters", services.engine, services.access).running()  # the same process, recognised by its start time
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.slow
def test_two_starts_at_once_start_one_job(tiny_model, project):
    import threading

    from clo.config import Recipe
    from clo.app.context import Services
    from clo.app.settings import Settings

    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db"))
    jobs = services.jobs
    recipe = lambda name: Recipe.load(overrides={"model.name_or_path": str(tiny_model), "method.method": "sft",  # noqa: E731
                                                 "data.pairs": 8, "training.max_steps": 100000, "training.name": name})
    outcomes, barrier = [], threading.Barrier(2)

    def start(name):
        barrier.wait()
        try:
            outcomes.append(jobs.start(None, recipe(name))["pid"])
        except Exception as e:  # noqa: BLE001 (the loser's message)
            outcomes.append(str(e))

    threads = [threading.Thread(target=start, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(isinstance(o, int) for o in outcomes) == 1, outcomes
        assert any("already going" in str(o) for o in outcomes)
    finally:
        jobs.stop(None)


def test_demo_mode_shows_only_a_way_in_that_can_work(tiny_model, project):
    """Demo mode's Train tab: the password box only when a password is set; with no password and no allowed
    accounts, one line saying training is closed (a box that can never open would only puzzle a visitor)."""
    from clo.app.context import Services
    from clo.app.settings import Settings
    from clo.app.ui import build_app
    from clo.engines.peft_engine import PeftEngine

    engine = PeftEngine(str(tiny_model))
    labels = {}
    for password in ("", "s3cret"):
        services = Services(Settings(model=str(tiny_model), engine="peft", db="votes.db", demo_mode=True,
                                     admin_password=password or None), engine=engine)
        try:
            config = build_app(services).config
        finally:
            services.close()
        labels[password] = [(c["props"].get("label"), c["props"].get("elem_id")) for c in config["components"]]
    assert ("Admin password", None) not in labels[""] and (None, "train-closed") in labels[""]
    assert ("Admin password", None) in labels["s3cret"] and (None, "train-closed") not in labels["s3cret"]
    engine.close()


# ---- answers at demo speed: the served model's own sampling, and a line that says when it is too slow ----

def test_the_app_decodes_with_the_served_models_own_defaults_and_the_flags_win(monkeypatch):
    from clo.app.context import app_sampling
    from clo.app.settings import Settings
    from clo.engines import Sampling
    from clo.models.table import MODELS

    assert app_sampling(MODELS["smollm2"], Settings()) == Sampling(max_tokens=64, stop=("\n\n",))
    assert app_sampling(None, Settings()) == Sampling()  # a hub model: the engine's defaults (256 tokens)
    monkeypatch.setenv("CLO_REPETITION_PENALTY", "1.1")
    mine = app_sampling(MODELS["smollm2"], Settings.from_args(["--max-tokens", "200"]))
    assert mine == Sampling(max_tokens=200, repetition_penalty=1.1, stop=("\n\n",))
    monkeypatch.setenv("CLO_REPETITION_PENALTY", "0")
    with pytest.raises(Exception, match="CLO_REPETITION_PENALTY='0' is not a number above 0"):
        Settings.from_args([])


def test_a_slow_compare_says_what_to_lower():
    from clo.app.ui.compare import pace
    from clo.engines import Answer, Sampling

    quick = [Answer("base", "hi", 2, 1.0, "stop")] * 6
    assert pace(3.04, quick, Sampling()) == "<span class='stats'>6 answers in 3.0 s</span>"
    long = [Answer("base", "…", 256, 40.0, "length")] + quick[:5]
    assert "`--max-tokens 96`" in pace(40.0, long, Sampling(max_tokens=256))  # 256 tokens × 15 s / 40 s, to 8s
    assert "the machine itself is slow" in pace(40.0, quick, Sampling(max_tokens=256))
