"""What the app's tabs share: settings (flags and environment variables), the engine, the vote store, examples.

Every flag of `python app.py` can also come from an environment variable (for Spaces):

    --model CLO_MODEL   --adapters-dir CLO_ADAPTERS_DIR   --db CLO_DB   --engine CLO_ENGINE
    --host CLO_HOST     --port CLO_PORT                   --demo-mode CLO_DEMO_MODE
    --max-prompt-chars CLO_MAX_PROMPT_CHARS                --max-tokens CLO_MAX_TOKENS
    --votes-per-10min CLO_VOTES_PER_10MIN   --generations-per-min CLO_GENERATIONS_PER_MIN
    --voters-per-address CLO_VOTERS_PER_ADDRESS   --queued-per-address CLO_QUEUED_PER_ADDRESS
    --trusted-proxies CLO_TRUSTED_PROXIES
    --max-upload-mb CLO_MAX_UPLOAD_MB   --max-upload-rows CLO_MAX_UPLOAD_ROWS   --debug CLO_DEBUG
    --judge-url CLO_JUDGE_URL   --judge-model CLO_JUDGE_MODEL   --judge-background CLO_JUDGE_BACKGROUND (on|off)
    --judge-constraint CLO_JUDGE_CONSTRAINT (auto|choice|logprobs|none)   the judge's API key: CLO_JUDGE_API_KEY
    admin password: CLO_ADMIN_PASSWORD   allowed Hugging Face users: CLO_ALLOWED_USERS (comma-separated)
    voter pseudonyms' key: CLO_SECRET (else one made once and kept in the vote store)

What the app serves comes from the one table of offline models (clo.models.table; `python -m clo models list`): a
shorthand or a folder one of them made brings its description for the page, its example prompts, its languages,
its language detector and its adapters; a hub model that cannot be loaded here is replaced by the table's app
fallback.

    services = start(Settings.from_args(["--model", "smollm2"]))   # what `python app.py --model smollm2` serves
    services.running_on      # "**SmolLM2-135M-Instruct** (`models/smollm2-135m-instruct`): 135M parameters, ..."
"""

from __future__ import annotations

import argparse
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from clo import CLOError
from clo.evaluate import langid
from clo.app.access import Access, RateLimit, visitor_of
from clo.engines import Engine, Request, Sampling, load_engine
from clo.engines.base import prompt_text
from clo.app.jobs import MAX_UPLOAD_MB, MAX_UPLOAD_ROWS, ZERO_GPU, Jobs, on_gpu
from clo.languages import LANGUAGES, lang_code, language
from clo.app.lineup import Lineup
from clo.evaluate.judge import CONSTRAINTS
from clo.evaluate.judge_background import Judging
from clo.models.table import MODELS, app_fallback, canonical, entry_for, resolve_model, sample_examples
from clo.evaluate.store import Limits, open_store

DATA = Path("/data")  # a Space's persistent storage, when it has one
LINEUP_FILE = "lineup.json"  # the speaker's choice of served adapters, beside them (clo.app.lineup)


# a Space's container is reached only through the platform's proxies, on private addresses
SPACE_PROXIES = "127.0.0.1,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


def _default(sub: str) -> str:
    return str(DATA / sub) if DATA.is_dir() and os.access(DATA, os.W_OK) else sub


def _env_number(name: str, default, kind=int):
    """Environment variable `name` as a number of `kind` (`default` when unset); a value that is not one, or not
    above zero, is one CLOError naming the variable."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        what = "a whole number" if kind is int else "a number"
        raise CLOError(f"{name}={raw!r} is not {what} above 0: set it to one"
                       + (f" (default {default:g})" if default is not None else "") + ", or unset it")
    return value


def _above_zero(kind):
    """An argparse type: a number of `kind` above 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
        return value
    return parse


def _on_off(name: str, raw: str | None) -> str:
    """An on/off environment variable (1/true/yes/on or 0/false/no/off) as "on" or "off"; unset: "on"."""
    if raw is None or not raw.strip():
        return "on"
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return "on"
    if word in ("0", "false", "no", "off"):
        return "off"
    raise CLOError(f"{name}={raw!r} is neither on nor off: set it to 1 or 0, or unset it")


def _judge_constraint(raw: str | None) -> str:
    """CLO_JUDGE_CONSTRAINT as one of clo.evaluate.judge.CONSTRAINTS; unset: auto."""
    if raw is None or not raw.strip():
        return "auto"
    if raw.strip().lower() not in CONSTRAINTS:
        raise CLOError(f"CLO_JUDGE_CONSTRAINT={raw!r} is not one of {', '.join(CONSTRAINTS)}: set it to one "
                       "(none reads a plain-text judge's reply), or unset it")
    return raw.strip().lower()


def debug_wanted(argv: list[str]) -> bool:
    """--debug among `argv`, or CLO_DEBUG set to 1/true/yes: show a traceback instead of one line."""
    return "--debug" in argv or os.environ.get("CLO_DEBUG", "").strip().lower() in ("1", "true", "yes")


@dataclass
class Settings:
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"
    adapters_dir: str = field(default_factory=lambda: _default("adapters"))
    db: str = field(default_factory=lambda: _default("votes.db"))
    engine: str = "auto"
    url: str | None = None  # the remote engine's server
    host: str | None = None  # None: where the platform says (GRADIO_SERVER_NAME, 0.0.0.0 on a Space), else 127.0.0.1
    port: int | None = None  # None: GRADIO_SERVER_PORT, else 7860
    demo_mode: bool = False
    admin_password: str | None = None
    allowed_users: tuple[str, ...] = ()
    max_prompt_chars: int = 4000
    max_tokens: int = 256
    concurrency: int = 4  # events other than generation (leaderboard, polling, downloads) run this many at a time
    generation_slots: int = 64  # generation events at once: the engine decodes them together in one running batch
    per_session: int = 2  # generation calls one visitor may have in flight; more get a message, not a queue spot
    votes_per_10min: int = 60  # per voter (a session from an address)
    generations_per_min: int = 20  # Compare / battle calls per voter per minute
    voters_per_address: int = 20  # an address (a room behind one NAT) may use this many voters' rate limits together
    queued_per_address: int = 16  # generation calls one address may have waiting or running; more get a message
    trusted_proxies: str | None = None  # peers whose X-Forwarded-For names the client; None: loopback (a Space: SPACE_PROXIES)
    queue_size: int = 256  # events waiting beyond that; the page shows each visitor its position
    max_upload_mb: float = MAX_UPLOAD_MB  # a training-data upload's size limit (clo.app.jobs)
    max_upload_rows: int = MAX_UPLOAD_ROWS  # and its row limit
    debug: bool = False  # a start-up error shows its traceback, not one line
    judge_url: str | None = None  # an OpenAI-compatible LLM judge (clo.evaluate.judge): its server
    judge_model: str | None = None  # and its model name there
    judge_background: bool = True  # with both: every new battle is judged in the background (clo.evaluate.judge_background)
    judge_constraint: str = "auto"  # how its replies are read (clo.evaluate.judge.CONSTRAINTS): auto suits vLLM
    judge_api_key: str | None = None  # CLO_JUDGE_API_KEY, from the environment only

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "Settings":
        env = os.environ.get
        d = cls()
        p = argparse.ArgumentParser(prog="python app.py", description="CLO demo: train, compare, judge blind, tally.")
        p.add_argument("--model", default=env("CLO_MODEL", d.model), help="base model: hub id, local folder, or a shorthand of the offline models' table "
                       f"({', '.join(sorted(MODELS))}: `python -m clo models list`), made on first use")
        p.add_argument("--adapters-dir", default=env("CLO_ADAPTERS_DIR", d.adapters_dir))
        p.add_argument("--db", default=env("CLO_DB", d.db), help="vote store: a path, sqlite:///... or postgresql://...")
        p.add_argument("--engine", default=env("CLO_ENGINE", d.engine), choices=("auto", "vllm", "remote", "peft"))
        p.add_argument("--url", default=env("CLO_URL"), help="vLLM server for --engine remote")
        p.add_argument("--host", default=env("CLO_HOST"), help="address to listen on (default: GRADIO_SERVER_NAME, "
                       "which a Space sets to 0.0.0.0, else 127.0.0.1)")
        p.add_argument("--port", type=int, default=_env_number("CLO_PORT", None),
                       help="port (default: GRADIO_SERVER_PORT, else 7860)")
        demo = env("CLO_DEMO_MODE")  # unset: on (locked) on a Space, off elsewhere
        p.add_argument("--demo-mode", action="store_true",
                       default=demo.lower() in ("1", "true", "yes") if demo else bool(env("SPACE_ID")),
                       help="only a visitor who gives the admin password or logs in as an allowed user may train or "
                            "change what is served (default on a Space; CLO_DEMO_MODE=0 turns it off)")
        p.add_argument("--max-prompt-chars", type=int, default=_env_number("CLO_MAX_PROMPT_CHARS", d.max_prompt_chars))
        p.add_argument("--max-tokens", type=int, default=_env_number("CLO_MAX_TOKENS", d.max_tokens), help="per answer")
        p.add_argument("--votes-per-10min", type=int, default=_env_number("CLO_VOTES_PER_10MIN", d.votes_per_10min),
                       help="votes one voter (a session from an address) may cast in 10 minutes")
        p.add_argument("--generations-per-min", type=int,
                       default=_env_number("CLO_GENERATIONS_PER_MIN", d.generations_per_min),
                       help="Compare and battle requests one voter may make per minute")
        p.add_argument("--voters-per-address", type=int,
                       default=_env_number("CLO_VOTERS_PER_ADDRESS", d.voters_per_address),
                       help="an address's sessions share this many voters' rate limits (raise it for a room behind one NAT)")
        p.add_argument("--queued-per-address", type=_above_zero(int),
                       default=_env_number("CLO_QUEUED_PER_ADDRESS", d.queued_per_address),
                       help="generation requests one network address may have waiting or being answered at once, "
                            f"whatever its sessions; more are refused with a message (default {d.queued_per_address})")
        p.add_argument("--max-upload-mb", type=_above_zero(float),
                       default=_env_number("CLO_MAX_UPLOAD_MB", d.max_upload_mb, float),
                       help=f"largest training-data upload, in MB (default {d.max_upload_mb:g})")
        p.add_argument("--max-upload-rows", type=_above_zero(int),
                       default=_env_number("CLO_MAX_UPLOAD_ROWS", d.max_upload_rows),
                       help=f"most rows in a training-data upload (default {d.max_upload_rows:,})")
        p.add_argument("--debug", action="store_true", default=debug_wanted([]),
                       help="a start-up error shows its traceback instead of one line (also CLO_DEBUG=1)")
        p.add_argument("--trusted-proxies", default=env("CLO_TRUSTED_PROXIES", SPACE_PROXIES if env("SPACE_ID") else None),
                       help="comma-separated addresses or networks whose X-Forwarded-For header names the client "
                            "(default: loopback; on a Space, the private networks its proxies use)")
        p.add_argument("--judge-url", default=env("CLO_JUDGE_URL"),
                       help="an OpenAI-compatible LLM judge's server (clo.evaluate.judge); its key in CLO_JUDGE_API_KEY")
        p.add_argument("--judge-model", default=env("CLO_JUDGE_MODEL"), help="the judge's model name at that server")
        p.add_argument("--judge-background", choices=("on", "off"),
                       default=_on_off("CLO_JUDGE_BACKGROUND", env("CLO_JUDGE_BACKGROUND")),
                       help="with a judge: judge every new battle in the background (default on); off leaves it to "
                            "the admin's button under Train")
        p.add_argument("--judge-constraint", choices=CONSTRAINTS, default=_judge_constraint(env("CLO_JUDGE_CONSTRAINT")),
                       help="how the judge's replies are read: auto (default: choice on vLLM, else logprobs), choice, "
                            "logprobs, or none (plain text, e.g. \"A\": for a server without log-probs)")
        a = p.parse_args(argv)
        if bool(a.judge_url) != bool(a.judge_model):
            raise CLOError("a judge needs both --judge-url and --judge-model (CLO_JUDGE_URL and CLO_JUDGE_MODEL); "
                           f"only {'the URL' if a.judge_url else 'the model'} was given")
        if a.judge_url and not a.judge_url.startswith(("http://", "https://")):
            raise CLOError(f"the judge URL must start with http:// or https://, got {a.judge_url!r}")
        users = tuple(u.strip() for u in env("CLO_ALLOWED_USERS", "").split(",") if u.strip())
        return cls(model=a.model, adapters_dir=a.adapters_dir, db=a.db, engine=a.engine, url=a.url, host=a.host, port=a.port,
                   demo_mode=a.demo_mode, admin_password=env("CLO_ADMIN_PASSWORD"), allowed_users=users,
                   max_prompt_chars=a.max_prompt_chars, max_tokens=a.max_tokens, votes_per_10min=a.votes_per_10min,
                   generations_per_min=a.generations_per_min, voters_per_address=a.voters_per_address,
                   queued_per_address=a.queued_per_address,
                   trusted_proxies=a.trusted_proxies, max_upload_mb=a.max_upload_mb, max_upload_rows=a.max_upload_rows,
                   debug=a.debug, judge_url=a.judge_url, judge_model=a.judge_model,
                   judge_background=a.judge_background == "on", judge_constraint=a.judge_constraint,
                   judge_api_key=env("CLO_JUDGE_API_KEY") or None)


def choose_model(settings: Settings, log=print) -> str:
    """Fit `settings` to the model `python app.py` serves; returns sentences the page adds about it ("" if none).

    An offline model (a shorthand of clo.models.table, or a folder one of them made) is served from its folder, made on
    first use, with its own adapters when --adapters-dir was not given. Any other model is served when it is a local
    folder, the hub answers or it is cached here; otherwise the registry's app fallback is served instead, saying why.
    """
    from clo.hub import hub_online, locate

    asked, note = settings.model, ""
    entry = entry_for(asked)
    if entry is None:
        source = locate(asked, kind="model", flag="--model")
        if source.local or hub_online() or _cached(asked):
            return ""
        entry = app_fallback()
        settings.model = entry.name
        note = (f" The Hugging Face hub is unreachable and {asked} is not cached here; start with --model PATH, or a "
                f"shorthand ({', '.join(sorted(MODELS))}), to serve another model.")
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


def start(settings: Settings, log=print) -> "Services":
    """What `python app.py` serves: the model chosen (`choose_model`), then the services, saying what runs."""
    note = choose_model(settings, log=log)
    services = Services(settings)
    if note:
        services.running_on += "." + note
    return services


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
            votes_per_address=settings.votes_per_10min * settings.voters_per_address))
        settings.model = resolve_model(settings.model)  # a shorthand (smollm2) -> its folder, as training records it
        self.entry = entry_for(settings.model)  # the offline model served (clo.models.table), or None
        self.engine = engine or load_engine(settings.engine, model=settings.model, adapters_dir=settings.adapters_dir,
                                            url=settings.url)
        what = f"{self.entry.describe(settings.model)}," if self.entry else settings.model  # what it is, in plain words
        self.running_on = running_on or f"{what} on the {self.engine.kind} engine"
        self.generations = RateLimit(window_s=60.0)
        self.examples = self.entry.examples() if self.entry else sample_examples()
        self.lineup = Lineup(Path(settings.adapters_dir) / LINEUP_FILE, self.engine)
        self.access = Access(settings.demo_mode, settings.admin_password, settings.allowed_users)
        self.jobs = Jobs(settings.model, settings.adapters_dir, self.engine, self.access,
                         max_upload_mb=settings.max_upload_mb, max_upload_rows=settings.max_upload_rows)
        self.judging = Judging(self.store, self.access, settings.judge_url, settings.judge_model,
                               api_key=settings.judge_api_key, background=settings.judge_background,
                               constraint=settings.judge_constraint)
        self.flying: dict[str, int] = {}  # session -> generation calls in flight
        self.flying_lock = threading.Lock()

    def close(self) -> None:
        """What a stop (SIGTERM, Ctrl-C, Gradio's close: app.py) leaves behind: the background judge told to stop,
        then the vote store closed, a vote being written committed first, so its file alone holds every vote that
        was acknowledged. Again, it does nothing."""
        self.judging.close(timeout=0)  # no wait for a judge's reply: its next write is refused
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

    def detect(self, text: str) -> langid.Detection:
        """The language of an answer of the served model: its own detector first, where it brings one."""
        return langid.detect(text, self.entry.detect if self.entry else None)

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
        return on_gpu(self.engine.generate)(requests)

    def stream(self, requests: list[Request]):
        return on_gpu(lambda r: list(self.engine.stream(r)))(requests) if ZERO_GPU else self.engine.stream(requests)

    def requests(self, prompt: str, variants: list[str], owner: str | None = None) -> list[Request]:
        """One request per variant; `owner` (the visitor's address) is whom the engine's fair queue serves in turn."""
        sampling = Sampling(max_tokens=self.settings.max_tokens)
        return [Request(v, [{"role": "user", "content": prompt}], sampling, owner=owner or "") for v in variants]
