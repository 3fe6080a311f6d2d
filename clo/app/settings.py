"""The app's settings: one dataclass whose fields are the flags of `python app.py` and their CLO_* variables.

Every flag can also come from an environment variable (for Spaces); clo.cli builds the parser from the fields:

    --model CLO_MODEL   --adapters-dir CLO_ADAPTERS_DIR   --adapters CLO_ADAPTERS   --db CLO_DB   --engine CLO_ENGINE   --url CLO_URL
    --snapshot-seconds CLO_SNAPSHOT_SECONDS (how often a --db on a network or FUSE mount is copied there)
    --host CLO_HOST     --port CLO_PORT                   --demo-mode CLO_DEMO_MODE
    --max-prompt-chars CLO_MAX_PROMPT_CHARS                --max-tokens CLO_MAX_TOKENS
    --repetition-penalty CLO_REPETITION_PENALTY
    --votes-per-10min CLO_VOTES_PER_10MIN   --generations-per-min CLO_GENERATIONS_PER_MIN
    --voters-per-address CLO_VOTERS_PER_ADDRESS   --queued-per-address CLO_QUEUED_PER_ADDRESS
    --trusted-proxies CLO_TRUSTED_PROXIES
    --max-upload-mb CLO_MAX_UPLOAD_MB   --max-upload-rows CLO_MAX_UPLOAD_ROWS   --debug CLO_DEBUG
    --judge-url CLO_JUDGE_URL   --judge-model CLO_JUDGE_MODEL   --judge-background CLO_JUDGE_BACKGROUND (on|off)
    --judge-constraint CLO_JUDGE_CONSTRAINT (auto|choice|logprobs|none)   the judge's API key: CLO_JUDGE_API_KEY
    --votes-repo CLO_VOTES_REPO (owner/name, with HF_TOKEN)   --votes-every-minutes CLO_VOTES_EVERY_MINUTES
    admin password: CLO_ADMIN_PASSWORD   allowed Hugging Face users: CLO_ALLOWED_USERS (comma-separated)
    voter pseudonyms' key: CLO_SECRET (else one made once and kept in the vote store)

A flag wins over its variable, the variable over the default. A bad number in a variable is one error naming it.

    settings = Settings.from_args(["--model", "smollm2"])     # what `python app.py --model smollm2` reads
    Settings(model="models/tiny", engine="peft")               # or built directly (tests)
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from clo import CLOError
from clo.app.jobs import MAX_UPLOAD_MB, MAX_UPLOAD_ROWS
from clo.cli import add_options, from_args
from clo.config import option
from clo.evaluate.judge.protocol import CONSTRAINTS
from clo.models.table import MODELS

DATA = Path("/data")  # a Space's persistent storage, when it has one

# a Space's container is reached only through the platform's proxies, on private addresses
SPACE_PROXIES = "127.0.0.1,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


def _default(sub: str) -> str:
    return str(DATA / sub) if DATA.is_dir() and os.access(DATA, os.W_OK) else sub


def _truthy(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("1", "true", "yes")


def debug_wanted(argv: list[str]) -> bool:
    """--debug among `argv`, or CLO_DEBUG set to 1/true/yes: show a traceback instead of one line."""
    return "--debug" in argv or _truthy(os.environ.get("CLO_DEBUG"))


def _demo_mode(raw: str | None) -> bool:
    """CLO_DEMO_MODE: 1/true/yes is on, anything else off; unset: on (locked) on a Space, off elsewhere."""
    return raw.lower() in ("1", "true", "yes") if raw else bool(os.environ.get("SPACE_ID"))


def _trusted_proxies(raw: str | None) -> str | None:
    """CLO_TRUSTED_PROXIES; unset: loopback only (None), on a Space the private networks its proxies use."""
    return raw if raw is not None else (SPACE_PROXIES if os.environ.get("SPACE_ID") else None)


def _judge_constraint(raw: str | None) -> str:
    """CLO_JUDGE_CONSTRAINT as one of clo.evaluate.judge.protocol.CONSTRAINTS; unset: auto."""
    if raw is None or not raw.strip():
        return "auto"
    if raw.strip().lower() not in CONSTRAINTS:
        raise CLOError(f"CLO_JUDGE_CONSTRAINT={raw!r} is not one of {', '.join(CONSTRAINTS)}: set it to one "
                       "(none reads a plain-text judge's reply), or unset it")
    return raw.strip().lower()


@dataclass
class Settings:
    model: str = option("Qwen/Qwen2.5-0.5B-Instruct", "base model: hub id, local folder, or a shorthand of the offline "
                        f"models' table ({', '.join(sorted(MODELS))}: `python -m clo models list`), made on first use",
                        env="CLO_MODEL")
    adapters_dir: str = option(help="", env="CLO_ADAPTERS_DIR", default_factory=lambda: _default("adapters"))
    adapters: str | None = option(None, "comma-separated adapters to serve: folders under --adapters-dir and hub repos "
                                  "owner/name[@revision] (default: every folder under --adapters-dir)",
                                  env="CLO_ADAPTERS")
    db: str = option(help="vote store: a path, sqlite:///... or postgresql://...", env="CLO_DB",
                     default_factory=lambda: _default("votes.db"))
    snapshot_seconds: float = option(30.0, "a vote store on a network or FUSE mount (a Space's /data bucket) lives on "
                                     "local disk and is copied there this often, in seconds, and at shutdown; a crash "
                                     "loses the votes since the last copy (default 30)", env="CLO_SNAPSHOT_SECONDS",
                                     positive=True)  # clo.evaluate.snapshot
    engine: str = option("auto", "", choices=("auto", "vllm", "remote", "peft"), env="CLO_ENGINE")
    url: str | None = option(None, "vLLM server for --engine remote", env="CLO_URL")  # the remote engine's server
    host: str | None = option(None, "address to listen on (default: GRADIO_SERVER_NAME, which a Space sets to 0.0.0.0, "
                              "else 127.0.0.1)", env="CLO_HOST")  # None: where the platform says
    port: int | None = option(None, "port (default: GRADIO_SERVER_PORT, else 7860)", env="CLO_PORT")
    demo_mode: bool = option(False, "only a visitor who gives the admin password or logs in as an allowed user may "
                             "train or change what is served (default on a Space; CLO_DEMO_MODE=0 turns it off)",
                             env="CLO_DEMO_MODE", from_env=_demo_mode)
    admin_password: str | None = option(None, "the admin password", cli=False, env="CLO_ADMIN_PASSWORD")
    allowed_users: tuple[str, ...] = option(
        (), "Hugging Face users who may train", cli=False, env="CLO_ALLOWED_USERS",
        from_env=lambda raw: tuple(u.strip() for u in (raw or "").split(",") if u.strip()))
    max_prompt_chars: int = option(4000, "", env="CLO_MAX_PROMPT_CHARS")
    max_tokens: int | None = option(None, "longest answer, in tokens (default: the served model's own, e.g. 64 for "
                                    "smollm2; else 256)", env="CLO_MAX_TOKENS")
    repetition_penalty: float | None = option(None, "above 1 discourages repeating a token (default: the served "
                                              "model's own, else 1 = none)", env="CLO_REPETITION_PENALTY")
    concurrency: int = 4  # events other than generation (leaderboard, polling, downloads) run this many at a time
    generation_slots: int = 64  # generation events at once: the engine decodes them together in one running batch
    per_session: int = 2  # generation calls one visitor may have in flight; more get a message, not a queue spot
    votes_per_10min: int = option(60, "votes one voter (a session from an address) may cast in 10 minutes",
                                  env="CLO_VOTES_PER_10MIN")
    generations_per_min: int = option(20, "Compare and battle requests one voter may make per minute",
                                      env="CLO_GENERATIONS_PER_MIN")
    voters_per_address: int = option(20, "an address's sessions share this many voters' rate limits (raise it for a "
                                     "room behind one NAT)", env="CLO_VOTERS_PER_ADDRESS")
    queued_per_address: int = option(16, "generation requests one network address may have waiting or being answered "
                                     "at once, whatever its sessions; more are refused with a message (default 16)",
                                     env="CLO_QUEUED_PER_ADDRESS", positive=True)
    queue_size: int = 256  # events waiting beyond that; the page shows each visitor its position
    max_upload_mb: float = option(MAX_UPLOAD_MB, f"largest training-data upload, in MB (default {MAX_UPLOAD_MB:g})",
                                  env="CLO_MAX_UPLOAD_MB", positive=True)  # clo.app.jobs checks it
    max_upload_rows: int = option(MAX_UPLOAD_ROWS, f"most rows in a training-data upload (default {MAX_UPLOAD_ROWS:,})",
                                  env="CLO_MAX_UPLOAD_ROWS", positive=True)
    debug: bool = option(False, "a start-up error shows its traceback instead of one line (also CLO_DEBUG=1)",
                         env="CLO_DEBUG", from_env=_truthy)
    trusted_proxies: str | None = option(
        None, "comma-separated addresses or networks whose X-Forwarded-For header names the client (default: "
        "loopback; on a Space, the private networks its proxies use)", env="CLO_TRUSTED_PROXIES",
        from_env=_trusted_proxies)
    judge_url: str | None = option(None, "an OpenAI-compatible LLM judge's server (clo.evaluate.judge); its key in "
                                   "CLO_JUDGE_API_KEY", env="CLO_JUDGE_URL")
    judge_model: str | None = option(None, "the judge's model name at that server", env="CLO_JUDGE_MODEL")
    judge_background: bool = option(True, "with a judge: judge every new battle in the background (default on); off "
                                    "leaves it to the admin's button under Train", choices=("on", "off"),
                                    env="CLO_JUDGE_BACKGROUND")  # clo.evaluate.judge.background
    judge_constraint: str = option("auto", "how the judge's replies are read: auto (default: choice on vLLM, else "
                                   "logprobs), choice, logprobs, or none (plain text, e.g. \"A\": for a server without "
                                   "log-probs)", choices=CONSTRAINTS, env="CLO_JUDGE_CONSTRAINT",
                                   from_env=_judge_constraint)
    judge_api_key: str | None = option(None, "the judge server's API key", cli=False, env="CLO_JUDGE_API_KEY",
                                       from_env=lambda raw: raw or None)
    votes_repo: str | None = option(None, "a Hugging Face dataset repo (owner/name) the votes are mirrored to, "
                                    "committed every --votes-every-minutes; needs HF_TOKEN (clo.evaluate.hub_sync)",
                                    env="CLO_VOTES_REPO", from_env=lambda raw: (raw or "").strip() or None)
    votes_every_minutes: float = option(5.0, "minutes between two commits of the votes mirror (default 5)",
                                        env="CLO_VOTES_EVERY_MINUTES", positive=True)

    def adapter_names(self) -> list[str] | None:
        """--adapters as a list (None: every folder under --adapters-dir)."""
        if self.adapters is None or not self.adapters.strip():
            return None
        return list(dict.fromkeys(a.strip() for a in self.adapters.split(",") if a.strip()))

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "Settings":
        """The flags in `argv` (`python app.py --help` lists them), each else its CLO_* variable, else the default."""
        parser = argparse.ArgumentParser(prog="python app.py", description="CLO demo: train, compare, judge blind, tally.")
        add_options(parser, cls, annotate=False)
        settings = from_args(cls, parser.parse_args(argv))
        if bool(settings.judge_url) != bool(settings.judge_model):
            raise CLOError("a judge needs both --judge-url and --judge-model (CLO_JUDGE_URL and CLO_JUDGE_MODEL); "
                           f"only {'the URL' if settings.judge_url else 'the model'} was given")
        if settings.judge_url and not settings.judge_url.startswith(("http://", "https://")):
            raise CLOError(f"the judge URL must start with http:// or https://, got {settings.judge_url!r}")
        return settings
