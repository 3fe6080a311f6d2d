"""The app as an attacker sees it: every endpoint it exposes called without authorization, forged headers,
fresh sessions, paths outside the project. Nothing may start, be written or be served."""

import json
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import launch_app, make_adapters

from clo import CLOError
from clo.app.access import Access, RateLimit

# the handlers that change server state; the test fails if one of them is renamed without this list following
STATE_CHANGING = {"on_start_1": "Train: Start", "on_stop": "Train: Stop", "on_experiment_start": "Train: miniature run",
                  "on_upload": "Train: upload", "on_tick": "Train: poll + hot-load", "on_apply": "Serving: Apply",
                  "on_judge_start": "LLM judge: judge the stored battles"}


# ---- the pieces, alone ----

def test_access_in_demo_mode_opens_only_to_the_password_or_an_allowed_user():
    assert Access(demo_mode=False).allows("anyone")
    access = Access(demo_mode=True, password="s3cret", allowed_users=("alice",))
    with pytest.raises(CLOError, match="admin password"):
        access.require("visitor")
    assert not access.unlock("visitor", "wrong") and not access.unlock("visitor", "") and not access.allows("visitor")
    assert not access.login("visitor", "mallory") and not access.login("visitor", None)
    assert access.unlock("speaker", "s3cret") and access.allows("speaker")
    assert access.login("alice-tab", "alice") and access.allows("alice-tab")
    assert not access.allows("visitor") and not access.allows(None)
    assert not Access(demo_mode=True, password=None).unlock("x", "")  # no password set: nobody unlocks with ""


def test_the_job_supervisor_refuses_every_change_itself(tiny_model, project):
    from clo.config import Recipe
    from clo.app.jobs import RUNS, UPLOADS, Jobs

    jobs = Jobs(str(tiny_model), "adapters", engine=None, access=Access(demo_mode=True, password="pw"))
    upload = project / "up.jsonl"
    upload.write_text(json.dumps({"prompt_en": "Hi", "response_en": "Hello"}) + "\n")
    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "method.method": "sft"})
    for call in (lambda: jobs.start("visitor", recipe), lambda: jobs.start_experiment("visitor", "miniature"),
                 lambda: jobs.stop("visitor"), lambda: jobs.hot_load("visitor"), lambda: jobs.upload("visitor", str(upload))):
        with pytest.raises(CLOError, match="admin password"):
            call()
    assert not RUNS.exists() and not UPLOADS.exists() and not Path("adapters").exists()


def test_a_path_from_the_web_stays_inside_the_project(project):
    from clo.app.jobs import web_data_source

    (project / "uploads").mkdir()
    (project / "uploads" / "mine.jsonl").write_text("{}\n")
    (project / "data").mkdir()
    (project / "data" / "pairs.csv").write_text("prompt_en,response_en\n")
    (project / "uploads" / "escape.jsonl").symlink_to("/etc/hostname")
    for fine in ("sample", "miniature", "OpenAssistant/oasst1", "uploads/mine.jsonl", "data/pairs.csv",
                 str(project / "uploads" / "mine.jsonl")):
        assert web_data_source(fine) == fine
    messages = {}
    for bad in ("/etc/hostname", "/etc/no-such-file.jsonl", "../../../etc/hostname", "../../../etc/no-such-file",
                "uploads/../../../etc/hostname", "uploads/escape.jsonl", "~/.bashrc", "secret.jsonl", "/proc/self/environ"):
        with pytest.raises(CLOError) as caught:
            web_data_source(bad)
        messages[bad] = str(caught.value).replace(repr(bad), "PATH")
    # an existing system file and a missing one get the same sentence: nothing is learnt about the machine
    assert len(set(messages.values())) == 1, messages
    assert "cannot be used from the web" in next(iter(messages.values()))


def test_a_rate_limit_counts_all_keys_or_none_and_says_when_to_retry():
    limit = RateLimit(window_s=60)
    limit.hit([("this session", "s1", 2), ("this network address", "a1", 3)])
    limit.hit([("this session", "s1", 2), ("this network address", "a1", 3)])
    with pytest.raises(CLOError, match=r"too many requests from this session: at most 2 per 60 s; try again in (59|60|61) s"):
        limit.hit([("this session", "s1", 2), ("this network address", "a1", 3)])
    limit.hit([("this session", "s2", 2), ("this network address", "a1", 3)])  # the refused call was not counted
    with pytest.raises(CLOError, match="from this network address"):  # a fresh session, the same address
        limit.hit([("this session", "s3", 2), ("this network address", "a1", 3)])
    assert len(limit.events["a1"]) == 3 and "s3" in limit.events and not limit.events["s3"]


# ---- the live server ----

def queue_call(url: str, fn_index: int, data: list, session: str, trigger_id=None, timeout: float = 120) -> dict:
    """One event through Gradio's queue over raw HTTP (what the page does): returns the final message."""
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": trigger_id}
    r = httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=30)
    if r.status_code != 200:
        return {"msg": "refused", "success": False, "status": r.status_code, "output": {"error": r.text[:200]}}
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=timeout) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") in ("process_completed", "unexpected_error"):
                    return msg
    return {"msg": "no answer", "success": False}


def call_route(url: str, api_name: str, data: list) -> str:
    """The named route `/gradio_api/call/<api_name>`: 'refused <status>', 'error: ...' or 'complete'."""
    r = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    if r.status_code != 200:
        return f"refused {r.status_code}"
    event = r.json()["event_id"]
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name}/{event}", timeout=120) as s:
        kind = None
        for line in s.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("error", "complete"):
                return "complete" if kind == "complete" else f"error: {line[5:].strip()[:120]}"
    return "no answer"


def snapshot(work: Path) -> dict:
    """What a change would leave: files outside the vote store, the app's log and caches."""
    skip = ("votes.db", "app.log", "cache", ".gradio")
    return {str(p.relative_to(work)): p.stat().st_mtime for p in work.rglob("*")
            if not any(part.startswith(skip) for part in p.relative_to(work).parts)}


@pytest.mark.slow
def test_every_endpoint_called_without_authorization_changes_nothing(tiny_model, tmp_path):
    """Demo mode with an admin password: each event the server exposes is called as an anonymous visitor, over raw
    HTTP by its fn_index and through the named route; the state-changing ones are refused, nothing is written or
    started. Then the same raw call works for a session that gave the password (the lock is the password)."""
    import psutil

    make_adapters(tiny_model, tmp_path / "adapters")
    password = "pw-" + uuid.uuid4().hex
    # its own launch, not the shared app_url: demo mode is a setting at start, and its snapshot needs a folder no
    # other test writes in
    proc, url = launch_app(tiny_model, tmp_path, CLO_DEMO_MODE="1", CLO_ADMIN_PASSWORD=password)
    try:
        config = httpx.get(f"{url}config", timeout=30).json()
        components = {c["id"]: c for c in config["components"]}
        deps = [d for d in config["dependencies"] if d.get("backend_fn")]
        names = {d["api_name"] for d in deps}
        assert set(STATE_CHANGING) <= names, set(STATE_CHANGING) - names
        upload = httpx.post(f"{url}gradio_api/upload", files={"files": ("pairs.jsonl", b'{"prompt_en": "a", "response_en": "b"}\n')},
                            timeout=30).json()[0]
        file_data = {"path": upload, "orig_name": "pairs.jsonl", "meta": {"_type": "gradio.FileData"}}
        before = snapshot(tmp_path)

        def inputs(dep):
            values = []
            for i in dep["inputs"]:
                c = components[i]
                values.append(file_data if c["type"] == "file" else c.get("props", {}).get("value"))
            return values

        report = []
        for dep in deps:
            msg = queue_call(url, dep["id"], inputs(dep), session=uuid.uuid4().hex[:10],
                             trigger_id=dep["targets"][0][0] if dep["targets"] else None)
            error = (msg.get("output") or {}).get("error") or ""
            route = call_route(url, dep["api_name"], inputs(dep)) if dep["api_name"] in STATE_CHANGING else ""
            report.append((dep["id"], dep["api_name"], dep.get("api_visibility"), msg.get("success"), error, route))
            if dep["api_name"] in STATE_CHANGING:
                assert msg.get("success") is False and "admin password" in error, (dep["api_name"], msg)
                assert route.startswith(("refused", "error")), (dep["api_name"], route)
        # gradio_client by fn_index: refused the same way
        from gradio_client import Client

        client = Client(url, verbose=False)
        by_name = {d["api_name"]: d for d in deps}
        with pytest.raises(Exception):
            client.predict(fn_index=by_name["on_stop"]["id"])
        time.sleep(1)
        assert snapshot(tmp_path) == before  # no job file, no upload, no lineup.json, no adapter
        assert not psutil.Process(proc.pid).children(recursive=True)  # no training process
        written = Path(os.environ.get("CLO_ARTIFACTS", Path(__file__).parent / "artifacts"))
        written.mkdir(exist_ok=True)
        lines = ["| fn_index | event | visibility | anonymous call | named route |", "|---|---|---|---|---|"]
        for fid, name, vis, ok, error, route in report:
            what = STATE_CHANGING.get(name, name)
            lines.append(f"| {fid} | {what} | {vis} | {'ran' if ok else 'refused: ' + error[:60]} | {route[:40]} |")
        (written / "endpoints.md").write_text("\n".join(lines) + "\n")

        # the positive control: the same raw call from a session that gave the password starts a run
        admin = uuid.uuid4().hex[:10]
        unlock = by_name["check_password"]
        assert queue_call(url, unlock["id"], ["wrong"], session=admin)["success"]  # a toast, and still locked:
        assert "admin password" in queue_call(url, by_name["on_stop"]["id"], [], session=admin)["output"]["error"]
        assert queue_call(url, unlock["id"], [password], session=admin)["success"]
        start = by_name["on_start_1"]
        values = inputs(start)
        msg = queue_call(url, start["id"], values, session=admin)
        assert msg.get("success"), msg
        assert (tmp_path / "runs" / "ui" / "job.json").is_file()
        msg = queue_call(url, by_name["on_stop"]["id"], [], session=admin)
        assert msg.get("success"), msg
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(tiny_model, tmp_path):
    """Two sessions with different X-Forwarded-For headers from this (untrusted) peer are one address: they share
    its limit. When the peer is a trusted proxy, the header names the client and they are two."""
    from gradio_client import Client

    make_adapters(tiny_model, tmp_path / "adapters")
    limits = dict(CLO_GENERATIONS_PER_MIN="2", CLO_VOTERS_PER_ADDRESS="1",
                  CLO_MAX_TOKENS="8")  # short answers: the three calls fit well inside the 60 s window
    for trusted, second_allowed in (("192.0.2.1", False), ("127.0.0.1", True)):
        work = tmp_path / trusted
        work.mkdir()
        make_adapters(tiny_model, work / "adapters")
        # own launches: the trusted proxy and the rate limits are settings at start
        proc, url = launch_app(tiny_model, work, CLO_TRUSTED_PROXIES=trusted, **limits)
        try:
            first = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.1"})
            for _ in range(2):
                first.predict("안녕하세요", "ko", "", api_name="/compare")
            second = Client(url, verbose=False, headers={"X-Forwarded-For": "198.51.100.9"})
            if second_allowed:
                assert second.predict("안녕하세요", "ko", "", api_name="/compare")
            else:
                with pytest.raises(Exception, match="too many requests from this network address"):
                    second.predict("안녕하세요", "ko", "", api_name="/compare")
            with pytest.raises(Exception, match=r"too many requests from this session: at most 2 per 60 s; try again in \d+ s"):
                first.predict("안녕하세요", "ko", "", api_name="/compare")
        finally:
            proc.terminate()
            proc.wait(timeout=30)



def test_the_data_preview_never_loads_a_translator_or_grows_the_cache_for_a_visitor(project, monkeypatch):
    import gradio as gr

    from clo.train import data
    from clo.app.ui.data import MAX_PREVIEW, preview_pairs

    monkeypatch.setattr(data, "HFTranslator", lambda *a, **k: pytest.fail("a visitor's call loaded a translator"))
    with pytest.raises(gr.Error, match="no translations into 'yo'"):
        preview_pairs("yo", 5)  # not in the shipped sample: refused, not machine-translated on the server
    sample_rows = sum(1 for line in data.SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(preview_pairs("ko", 10**9)) == 2 * min(MAX_PREVIEW, sample_rows)
