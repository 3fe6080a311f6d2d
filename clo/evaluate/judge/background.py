"""The LLM judge in the app: the people's battles judged by an OpenAI-compatible judge (clo.evaluate.judge), on an admin's
word as a job with progress, and in the background after every vote when the app has a judge configured.

    judging = Judging(store, access, url="http://127.0.0.1:8001", model="Qwen/Qwen2.5-72B-Instruct")
    judging.start(request, language="ko")   # admins only (checked here): judge every stored battle not judged yet
    judging.poke()                           # after a vote: the background judge wakes; returns at once
    judging.state()                          # {"status": "running", "done": 12, "total": 40, ...}

Both ways judge what `clo.evaluate.judge.run.battle_items` finds in the vote store and the judge has not judged yet,
so a job that stopped (the judge down, slow, HTTP 500) resumes where it stopped, a restart of the app catches up, and
no pair is judged twice. One judging pass runs at a time, in its own threads: a vote only sets an event, so judging
never holds up a visitor. After a failure the background judge waits `retry_s` before it asks again; an admin's job
asks at once. A pair whose reply was unreadable is kept (clo.evaluate.judge.run) and the background judge asks it
again on its schedule (1, 2, 4 … minutes later), waking for it without a vote, never once per new vote; an admin's
job asks every such pair again. The Train tab's "LLM judge" panel (clo.app.ui.judging) drives it; it shows how many
replies were unreadable and one of them.

Configured with `python app.py --judge-url URL --judge-model NAME` or CLO_JUDGE_URL / CLO_JUDGE_MODEL (the key, when
the endpoint needs one, in CLO_JUDGE_API_KEY; CLO_JUDGE_BACKGROUND=0 leaves judging to the admin's button;
--judge-constraint / CLO_JUDGE_CONSTRAINT says how its replies are read, as `python -m clo judge --judge-constraint`:
the default, auto, suits vLLM; `none` reads a plain-text server's "A").
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import TYPE_CHECKING

from clo import CLOError
from clo.evaluate.judge.client import JudgeClient
from clo.evaluate.judge.protocol import PAIRWISE
from clo.evaluate.judge.run import CONSISTENCY_FLOOR, battle_items, judge_items, next_retry_s

if TYPE_CHECKING:
    from clo.app.access import Access  # the caller passes the app's Access; judging never imports the app

IDLE = {"status": "idle", "trigger": None, "judge": None, "url": None, "language": None, "done": 0, "total": 0,
        "judged": 0, "consistent": 0, "skipped": 0, "identical": 0, "unreadable": 0, "waiting": 0, "example": None, "tokens": 0,
        "error": None, "started": None, "finished": None}


class Judging:
    def __init__(self, store, access: Access, url: str | None = None, model: str | None = None,
                 api_key: str | None = None, background: bool = True, concurrency: int = 8, timeout: float = 120.0,
                 seed: int = 0, retry_s: float = 60.0, log=print, constraint: str = "auto"):
        self.store, self.access = store, access
        self.url, self.model, self.api_key, self.constraint = url or None, model or None, api_key or None, constraint
        self.concurrency, self.timeout, self.seed, self.retry_s, self.log = concurrency, timeout, seed, retry_s, log
        self.background = bool(background and self.configured)
        self.busy = threading.Lock()  # one judging pass at a time
        self.lock = threading.Lock()  # guards _state
        self._state = dict(IDLE)
        self.wake, self.closing = threading.Event(), threading.Event()
        self.retry_at = 0.0
        self.unreadable_due: float | None = None  # seconds from the last background pass to its first due retry
        self.worker = None
        if self.background:
            self.worker = threading.Thread(target=self._loop, name="judge-background", daemon=True)
            self.worker.start()
            self.wake.set()  # catch up on the battles voted before this start

    @property
    def configured(self) -> bool:
        return bool(self.url and self.model)

    # ---- reading (anyone) ----
    def state(self) -> dict:
        with self.lock:
            return dict(self._state)

    def public_line(self) -> str:
        """What every visitor may read: which judge judges the battles in the background, if one does."""
        if not self.background:
            return ""
        return (f"An LLM judge (`{self.model}`) also judges each blind battle in the background; its verdicts are "
                "shown apart, below, and never counted as votes.")

    def describe(self) -> str:
        """The admin panel's status line."""
        s = self.state()
        where = f"`{s['judge']}` at {s['url']}" if s["judge"] else ""
        scope = f" ({s['language']})" if s["language"] else ""
        counts = (f"{s['judged']} judged now, {s['skipped']} judged before, {s['identical']} identical pairs (ties), "
                  f"{s['unreadable']} unreadable" + (f", {s['waiting']} unreadable before (asked again later)"
                                                     if s["waiting"] else "")
                  + (f"; {s['tokens'] / s['judged']:.0f} judge tokens per verdict" if s["judged"] and s["tokens"] else ""))
        if s["judged"]:  # every pair asked in both orders (clo.evaluate.judge.run)
            counts += f"; both orders named the same winner in {s['consistent']} of {s['judged']}"
            if s["consistent"] < CONSISTENCY_FLOOR * s["judged"]:
                counts += " (it mostly follows the order shown: its win rates mean little)"
        example = f"; one unreadable reply: {s['example']}" if s["example"] else ""
        if s["status"] == "running":
            return f"**Judging**{scope} with {where}: {s['done']}/{s['total']} of the pairs not judged yet"
        if s["status"] == "failed":
            return f"**Stopped:** judging{scope} with {where} failed: {s['error']}"
        if s["status"] == "done" and s["unreadable"] and not s["judged"]:
            return (f"**Nothing judged:** judged{scope} with {where}, but every reply was unreadable ({s['unreadable']}){example}. "
                    "They are kept, never counted, and asked again later; a judge that answers in plain text needs "
                    "--judge-constraint none (CLO_JUDGE_CONSTRAINT=none).")
        if s["status"] == "done":
            return f"**Done:** judged{scope} with {where}: {counts}{example}."
        if self.background:
            return f"The background judge `{self.model}` at {self.url} judges each new battle."
        return "No judge has run since the app started."

    # ---- changing state ----
    def start(self, caller, url: str | None = None, model: str | None = None, language: str | None = None) -> dict:
        """An admin's job: judge every stored blind battle (of `language`, or all) that this judge has not judged,
        with the judge given (else the configured one), in a thread. Refused for a caller who may not administer
        and while another pass runs."""
        self.access.require(caller)
        url, model = (url or self.url or "").strip(), (model or self.model or "").strip()
        if not url or not model:
            raise CLOError("give the judge's URL and model name (or start the app with --judge-url and --judge-model)")
        if not self.busy.acquire(blocking=False):
            raise CLOError("the judge is already running: wait for it to finish")
        self._set(dict(IDLE, status="running", trigger="admin", judge=model, url=url, language=language,
                       started=time.time()))
        threading.Thread(target=self._pass, args=(url, model, language, "admin"), name="judge-job", daemon=True).start()
        return self.state()

    def poke(self) -> None:
        """A vote was cast: the background judge (when there is one) wakes and judges what is new."""
        if self.background:
            self.wake.set()

    def close(self, timeout: float = 10.0) -> None:
        self.closing.set()
        self.wake.set()
        if self.worker is not None:
            self.worker.join(timeout)

    # ---- inside ----
    def _set(self, state: dict) -> None:
        with self.lock:
            self._state = state

    def _update(self, **changes) -> None:
        with self.lock:
            self._state.update(changes)

    def _loop(self) -> None:
        while not self.closing.is_set():
            due = self.unreadable_due  # a vote wakes it, or an unreadable pair's retry falling due (passes ≥ 1 s apart)
            self.wake.wait(None if due is None else max(1.0, due))
            if self.closing.is_set():
                return
            pause = self.retry_at - time.monotonic()
            if pause > 0 and self.closing.wait(pause):  # after a failure: not before retry_s
                return
            self.wake.clear()
            with self.busy:  # after an admin's job, if one runs
                self._set(dict(IDLE, status="running", trigger="background", judge=self.model, url=self.url,
                               started=time.time()))
                self._pass(self.url, self.model, None, "background", locked=True)

    def _pass(self, url: str, model: str, language: str | None, trigger: str, locked: bool = False) -> None:
        """One pass over the stored battles not judged yet; the state says how it went. Releases `busy` unless the
        caller holds it."""
        try:
            client = None
            try:
                client = JudgeClient(url, model, api_key=self.api_key, constraint=self.constraint,
                                     timeout=self.timeout, concurrency=self.concurrency)
                items = battle_items(self.store.votes(), language)
                run = judge_items(items, client, self.store, seed=self.seed,
                                  progress=lambda k, n: self._update(done=k, total=n),
                                  due_only=trigger == "background")
            finally:
                if client is not None:
                    client.close()
        except CLOError as e:
            self._update(status="failed", error=str(e), finished=time.time())
            if trigger == "background":
                self.retry_at = time.monotonic() + self.retry_s
            self.log(f"[clo] judge ({trigger}): {e}")
        except Exception as e:  # noqa: BLE001 (a bug must not end the background thread; it is shown and logged)
            self._update(status="failed", error=f"{type(e).__name__}: {e}", finished=time.time())
            self.log(f"[clo] judge ({trigger}) failed:\n{traceback.format_exc()}")
        else:
            self.retry_at = 0.0
            self._update(status="done", judged=run.judged, consistent=run.consistent, skipped=run.skipped, identical=run.identical,
                         unreadable=len(run.unreadable), waiting=run.waiting, tokens=run.tokens, finished=time.time(),
                         example=_shown(run.unreadable[0]) if run.unreadable else None)
            if trigger == "background":  # the battles' unreadable pairs only (a CLI run's own are never battles)
                self.unreadable_due = next_retry_s(self.store, model, PAIRWISE.name, {item.key for item in items})
        finally:
            if not locked:
                self.busy.release()


def _shown(reply: str, limit: int = 120) -> str:
    """A judge's reply as the panel quotes it: one line, at most `limit` characters, in a code span (no markup)."""
    folded = " ".join(str(reply).split()).replace("`", "'")
    return f"`{folded[:limit]}{'…' if len(folded) > limit else ''}`" if folded else "*(an empty reply)*"
