"""The app, launched for real on a tiny model with two adapters, driven through gradio_client and the Train machinery."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from clo.data import SAMPLE
from clo.tiny import build_random_adapter

SAMPLE_ROW = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapters(model: Path, folder: Path) -> Path:
    for seed, method in enumerate(("sft", "clo"), 1):
        path = build_random_adapter(model, folder / f"{method}-ko", seed=seed)
        manifest = json.loads((path / "manifest.json").read_text())
        manifest.update(method=method, target_lang="ko")
        (path / "manifest.json").write_text(json.dumps(manifest))
    return folder


def launch_app(model: Path | str, work: Path, **extra_env):
    """Start `python app.py` in `work` on a loopback port; returns (process, url) once a client can connect.

    `extra_env` adds or overrides variables; None removes one."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CLO_MODEL": str(model), "CLO_ENGINE": "peft",
           "CLO_ADAPTERS_DIR": str(work / "adapters"), "CLO_DB": str(work / "votes.db"), "CLO_PORT": str(port),
           "CLO_MAX_PROMPT_CHARS": "2000", **extra_env}
    env = {k: v for k, v in env.items() if v is not None}
    log = open(work / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited: {(work / 'app.log').read_text()[-2000:]}")
        try:
            Client(url, verbose=False)
            return proc, url
        except Exception:  # noqa: BLE001 (not up yet)
            time.sleep(0.5)
    proc.kill()
    pytest.fail("app.py did not start in 120 s")


@pytest.fixture(scope="module")
def app_url(tiny_model, tmp_path_factory):
    """`python app.py` on the tiny model with an SFT and a CLO adapter, on a loopback port."""
    work = tmp_path_factory.mktemp("app")
    make_adapters(tiny_model, work / "adapters")
    proc, url = launch_app(tiny_model, work)
    yield url, work
    proc.terminate()
    proc.wait(timeout=30)


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
    assert set(b) == {"battle_id", "language", "prompt", "answer_a", "answer_b"}
    # nothing but the two answers' own text could name a variant (a random model's text may contain "base" by chance)
    leak = json.dumps({k: v for k, v in b.items() if k not in ("answer_a", "answer_b")})
    assert not any(name in leak for name in ("sft-ko", "clo-ko", "base", "variant", "hash"))
    reveal = client.predict(b["battle_id"], "a", api_name="/vote")
    assert {reveal["variant_a"], reveal["variant_b"]} <= {"base", "sft-ko", "clo-ko"} and reveal["outcome"] == "a"
    with pytest.raises(Exception, match="already has a vote"):
        client.predict(b["battle_id"], "b", api_name="/vote")
    board = client.predict("ko", api_name="/leaderboard")
    assert board["summary"][0]["rated"] >= 1
    assert {row["variant"] for row in board["bradley_terry"]} >= {reveal["variant_a"], reveal["variant_b"]}


def test_another_client_cannot_vote_on_my_battle(client, app_url):
    from gradio_client import Client

    b = client.predict("What is 2 + 2?", "ko", api_name="/battle")
    with pytest.raises(Exception, match="belongs to another session"):
        Client(app_url[0], verbose=False).predict(b["battle_id"], "a", api_name="/vote")


@pytest.mark.parametrize("prompt, language, message", [
    ("", "ko", "write a prompt first"),
    ("x" * 50_000, "ko", "the limit is 2,000"),
    ("hello", "xx", "unknown target language"),
])
def test_bad_input_is_a_message(client, prompt, language, message):
    with pytest.raises(Exception, match=message):
        client.predict(prompt, language, "", api_name="/compare")


def test_unknown_outcome_and_battle(client):
    with pytest.raises(Exception, match="unknown outcome"):
        client.predict("whatever", "left", api_name="/vote")
    with pytest.raises(Exception, match="unknown battle"):
        client.predict("no-such-battle", "a", api_name="/vote")


# ---- the Train tab's machinery: a real subprocess run, then the adapter is served ----

def test_train_job_runs_to_the_end_and_is_hot_loaded(tiny_model, project):
    from clo.config import Recipe
    from clo.ui.services import Services, Settings
    from clo.ui.train import Jobs, progress

    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db"))
    jobs = Jobs(services)
    with pytest.raises(Exception, match="nothing is running"):
        jobs.stop()
    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "method.method": "clo", "data.pairs": 8,
                                    "training.max_steps": 3, "training.max_length": 128, "training.max_prompt_length": 64,
                                    "training.name": "ui-{method}-{lang}"})
    job = jobs.start(recipe)
    assert job["command"].endswith(f"train --config {job['folder']}/recipe.yaml")
    with pytest.raises(Exception, match="already going"):
        jobs.start(recipe)
    deadline = time.time() + 240
    while jobs.running() and time.time() < deadline:
        time.sleep(0.5)
    assert not jobs.running(), jobs.tail()
    text, frame = progress(jobs.events())
    assert "100%" in text and "step 3/3" in text and not frame.empty
    assert jobs.hot_load() == ["ui-clo-ko"]
    assert services.slots("ko")["clo"] == "ui-clo-ko"
    answers = services.engine.generate(services.requests("안녕하세요", ["base", "ui-clo-ko"]))
    assert len(answers) == 2 and all(a.tokens for a in answers)


def test_stop_ends_the_process_tree(tiny_model, project):
    from clo.config import Recipe
    from clo.ui.services import Services, Settings
    from clo.ui.train import Jobs

    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db"))
    jobs = Jobs(services)
    jobs.start(Recipe.load(overrides={"model.name_or_path": str(tiny_model), "method.method": "sft", "data.pairs": 8,
                                      "training.max_steps": 100000, "training.name": "long"}))
    deadline = time.time() + 120
    while not any(e["event"] == "log" for e in jobs.events()) and time.time() < deadline:
        time.sleep(0.3)
    assert jobs.stop() in ("stopped", "killed")
    assert not jobs.running()
    assert not (project / "adapters" / "long").exists()


@pytest.mark.parametrize("content, message", [
    ("not json at all\n", "not valid JSON"),
    ('{"prompt": "only one field"}\n', "prompt_en and response_en"),
])
def test_bad_upload_is_a_message(tiny_model, project, content, message):
    import gradio as gr

    from clo.ui.train import upload_jsonl

    path = project / "up.jsonl"
    path.write_text(content)
    with pytest.raises(gr.Error, match=message):
        upload_jsonl(str(path))
    assert not (project / "uploads").exists()


def test_good_upload_is_copied_into_the_project(project):
    from clo.ui.train import upload_jsonl

    src = project / "up.jsonl"
    src.write_text(json.dumps({"prompt_en": "Hi", "response_en": "Hello!"}) + "\n")
    dest = Path(upload_jsonl(str(src)))
    assert dest.parent.name == "uploads" and dest.read_text() == src.read_text()
