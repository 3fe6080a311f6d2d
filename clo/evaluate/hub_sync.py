"""The votes mirror: the people's votes this app records, appended to JSONL shards in a local folder that
huggingface_hub's CommitScheduler commits to a Hugging Face dataset repo every few minutes.

    mirror = HubSync(store, "votes-mirror/me--clo-votes", "me/clo-votes")   # the local half: the card, data/ shards
    mirror.connect(token, every_minutes=5)      # in a thread: the repo made (private) if new, a CommitScheduler
    mirror.poke(battle_id)        # after a vote: returns at once; a writer thread appends the vote's row
    mirror.close()                # the last rows written, one last commit tried (a bounded wait), scheduler stopped

The app (clo.app.context.Services) starts it when CLO_VOTES_REPO is set and HF_TOKEN is there. What reaches the
folder, and so the repo, is EXPORTED and nothing else: the vote with its prompt, answers and variants, and the voter
as the store keeps it, a keyed hash of the session (clo.evaluate.store.keyed_hash); never the address's hash nor any
raw session id or address. A judge's verdicts stay in the store (`python -m clo votes export` has them).

Each process writes its own shards, `data/votes-<replica>-<n>.jsonl` (a fresh replica id per process, a new shard
every SHARD_ROWS rows, so one commit re-uploads at most one shard): replicas sharing a PostgreSQL store never write
the same file, and a restart never appends a vote twice, since only the votes cast in this process are written and
the ids already in the folder are skipped. The card (README.md: fields, how to load, the licence) is written once,
and committed only when the repo has none, so the owner's edits on the hub stay. The store stays the record: a hub
that cannot be reached or refuses the token costs one line, never a vote, and the shards wait in the folder for the
next commit (a later start commits whatever the folder holds, since the scheduler uploads every file it has not
uploaded itself).
"""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING

from clo.evaluate.schema import VOTE_COLUMNS
from clo.files import atomic_write
from clo.hub import _endpoint, check_repo_id

if TYPE_CHECKING:
    from clo.evaluate.store import VoteStore

# The columns a mirrored vote carries, each with its line in the dataset card: a whitelist, so a column added to the
# store (voter_address is one) never reaches the hub unless it is named here.
FIELDS = {
    "id": "the vote's id (unique: deduplicate on it if you merge copies)",
    "battle_id": "the blind battle voted on",
    "created_utc": "when the vote was cast, ISO 8601 in UTC",
    "voter": "a pseudonym of the voter's session (a keyed hash; the key stays with the app), for per-voter analyses",
    "language": "the prompt's language, an ISO 639-1 code",
    "prompt": "what the visitor asked, as typed (or drawn from the examples)",
    "variant_a": "the model variant that answered on the left (A), e.g. base, sft-ko, clo-ko",
    "variant_b": "the model variant that answered on the right (B)",
    "answer_a": "the left answer, as shown",
    "answer_b": "the right answer, as shown",
    "left_variant": "the variant shown on the left (the same as variant_a)",
    "outcome": "the vote: a (A better), b (B better), tie, both_bad",
    "engine": "the engine that generated the answers (peft, vllm, remote)",
    "hash_a": "a fingerprint of variant_a's weights, so votes on a retrained adapter stay apart",
    "hash_b": "a fingerprint of variant_b's weights",
    "blind": "true when the voter could not tell the variants apart before voting",
    "lang_a": "the detected language of answer_a (ISO 639-1, or a marker such as echo or loop)",
    "lang_b": "the detected language of answer_b",
    "langid_version": "the version of the language detector behind lang_a and lang_b",
    "pair_key": "a hash of (language, prompt, both variants and answers): votes on the same pair share it",
    "base_model": "the base model both answers came from",
    "base_hash": "a fingerprint of that base model, where known",
    "leak": "why the battle gave an identity away (an answer named a variant, ...); empty when it did not",
    "source_a": "where variant_a came from when it is an adapter on the hub: owner/name@commit; empty otherwise",
    "source_b": "the same for variant_b",
}
EXPORTED = tuple(FIELDS)
assert set(EXPORTED) <= set(VOTE_COLUMNS) and "voter_address" not in EXPORTED
SHARD_ROWS = 1000  # rows per shard: a commit uploads each changed file whole, so shards stay small
DATA = "data"  # the shards' folder in the repo and locally
FINAL_COMMIT_S = 20.0  # how long a stop waits for the last commit; what it does not commit waits in the folder

CARD = """\
---
pretty_name: CLO Arena votes
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.jsonl
---

# CLO Arena votes

People's blind pairwise votes from a [Cross-Lingual Optimization](https://arxiv.org/abs/2505.14297) demo app: a
visitor asks a prompt in a target language, two anonymous model variants (the base model, SFT, CLO) answer, and the
visitor votes. The app appends each vote to a JSONL shard per app process under `data/` and commits every few
minutes (huggingface_hub's CommitScheduler).

```python
from datasets import load_dataset

votes = load_dataset("{repo}", split="train")
```

Deduplicate on `id` if you merge copies. Voters are pseudonyms (keyed hashes of a session); no network address or
session id is stored. Prompts are what visitors typed and may contain anything they chose to write.

**Licence:** to be filled in by the owner of this repository (and set as `license:` in the front matter above).

## Fields

{fields}
"""


VOTES_REPO_SAYS = "CLO_VOTES_REPO / --votes-repo must be a dataset repo as owner/name, got {!r}"  # clo.hub.check_repo_id


def card(repo_id: str) -> str:
    return CARD.replace("{repo}", repo_id).replace("{fields}", "\n".join(f"- `{k}`: {v}" for k, v in FIELDS.items()))


def _reason(error: BaseException) -> str:
    """What went wrong talking to the hub, in a few words (the library's message's first line)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return f"the hub refused the token (HTTP {status})"
        return f"the hub answered HTTP {status}"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"the hub cannot be reached ({type(error).__name__}: {first[:200]})"


class HubSync:
    """The votes this process records, appended to the shards of `folder` by a writer thread (`poke`), and
    committed to the dataset repo `repo_id` by a CommitScheduler once `connect` has made one. `replica` names this
    process's shards (default: a fresh id); `log` takes the one-line messages."""

    def __init__(self, store: "VoteStore", folder: str | Path, repo_id: str, replica: str | None = None, log=print):
        self.store, self.folder, self.log = store, Path(folder), log
        self.repo_id = check_repo_id(repo_id.strip(), VOTES_REPO_SAYS)
        self.replica = replica or uuid.uuid4().hex[:12]
        (self.folder / DATA).mkdir(parents=True, exist_ok=True)
        self.card = self.folder / "README.md"
        if not self.card.exists():  # written once: an owner's edit of the local copy stays too
            atomic_write(self.card, card(self.repo_id))
        # one lock for our appends and the scheduler's listing of the folder (`_scheduler`'s lock): a commit never
        # takes a shard cut in the middle of a row
        self.lock = threading.Lock()
        self.seen = self._ids_in_folder()  # a vote already in a shard (an earlier process's too) is never appended
        self.shard, self.rows = 0, 0
        self.pending: list[str] = []  # battle ids voted on, waiting for the writer
        self.wake, self.closing = threading.Event(), threading.Event()
        self.scheduler = None
        self.writer = threading.Thread(target=self._write_loop, name="votes-mirror", daemon=True)
        self.writer.start()

    # ---- the local half ----
    def _ids_in_folder(self) -> set[str]:
        ids = set()
        for path in sorted((self.folder / DATA).glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    ids.add(json.loads(line)["id"])
                except (ValueError, KeyError, TypeError):  # a row cut by a crash: the rest of the file still counts
                    continue
        return ids

    def poke(self, battle_id: str) -> None:
        """A vote on `battle_id` was stored: the writer appends it. Returns at once (the vote's reply never waits)."""
        with self.lock:
            self.pending.append(str(battle_id))
        self.wake.set()

    def flush(self) -> int:
        """Append the votes poked so far that are not in a shard yet; returns how many rows were written."""
        with self.lock:
            battles, self.pending = self.pending, []
        if not battles:
            return 0
        marks = ", ".join("?" * len(battles))
        try:
            rows, names = self.store._read(f"SELECT {', '.join(EXPORTED)} FROM votes WHERE battle_id IN ({marks}) "
                                           "AND judge IS NULL ORDER BY created_utc, id", tuple(battles))
        except Exception:
            with self.lock:  # tried again at the next vote (or at close)
                self.pending[:0] = battles
            raise
        fresh = [dict(zip(names, row)) for row in rows]
        with self.lock:
            fresh = [r | {"blind": bool(r["blind"])} for r in fresh if r["id"] not in self.seen]
            lines: dict[Path, list[str]] = {}
            for row in fresh:
                if self.rows >= SHARD_ROWS:
                    self.shard, self.rows = self.shard + 1, 0
                lines.setdefault(self.path(), []).append(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows += 1
            for path, text in lines.items():  # appended, never rewritten: a commit may be reading the file
                with path.open("a", encoding="utf-8") as fh:
                    fh.write("".join(text))
            self.seen |= {r["id"] for r in fresh}
        return len(fresh)

    def path(self) -> Path:
        """This process's current shard."""
        return self.folder / DATA / f"votes-{self.replica}-{self.shard:05d}.jsonl"

    def _write_loop(self) -> None:
        while not self.closing.is_set():
            self.wake.wait()
            self.wake.clear()
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 (a full disk, a store being closed: the store still has the vote)
                self.log(f"[clo] votes mirror: a vote could not be appended to {self.folder} ({e}); the vote store "
                         "keeps it (`python -m clo votes export` has every vote)")

    # ---- the hub half ----
    def connect(self, token: str, every_minutes: float, endpoint: str | None = None) -> threading.Thread:
        """Make the repo (private, when new) and a CommitScheduler of the folder, in a thread (the hub may be slow or
        away; the app does not wait for it). A failure is one line; the shards wait in the folder."""
        thread = threading.Thread(target=self._connect, args=(token, every_minutes, endpoint),
                                  name="votes-mirror-connect", daemon=True)
        thread.start()
        return thread

    def _connect(self, token: str, every_minutes: float, endpoint: str | None) -> None:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint or _endpoint(), token=token)  # HF_ENDPOINT as it is now, not at import
        try:
            api.create_repo(self.repo_id, repo_type="dataset", private=True, exist_ok=True)
            has_card = api.file_exists(self.repo_id, "README.md", repo_type="dataset")
            scheduler = _scheduler(
                self.lock, self._failed, repo_id=self.repo_id, repo_type="dataset", folder_path=self.folder,
                every=every_minutes, hf_api=api, allow_patterns=["README.md", f"{DATA}/*.jsonl"],
                ignore_patterns=["README.md"] if has_card else None)  # the owner's card on the hub stays
        except Exception as e:  # noqa: BLE001 (offline, unreachable, refused: one line, the app runs on)
            self.log(f"[clo] votes mirror to {self.repo_id} is not committing: {_reason(e)}; the votes are kept in "
                     f"{self.folder} and a later start commits them")
            return
        self.scheduler = scheduler
        if self.closing.is_set():  # closed while connecting: close() already committed nothing; stop it here
            scheduler.stop()
            return
        self.log(f"[clo] votes mirrored to {api.endpoint}/datasets/{self.repo_id} every {every_minutes:g} minutes")

    def _failed(self, error: BaseException) -> None:
        self.log(f"[clo] votes mirror: a commit to {self.repo_id} failed: {_reason(error)}; the votes stay in "
                 f"{self.folder} and the next commit tries again")

    def close(self, timeout: float = FINAL_COMMIT_S) -> None:
        """The last pokes written, then one last commit (waiting at most `timeout` seconds), the scheduler stopped.
        Again, it does nothing."""
        if self.closing.is_set():
            return
        self.closing.set()
        self.wake.set()
        self.writer.join(timeout=5)
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 (as in the writer: the store keeps the vote)
            self.log(f"[clo] votes mirror: the last votes could not be appended to {self.folder} ({e})")
        scheduler = self.scheduler
        if scheduler is None:
            return
        try:
            scheduler.trigger().result(timeout=timeout)
        except FutureTimeout:
            self.log(f"[clo] votes mirror: the last commit to {self.repo_id} did not finish in {timeout:g} s; the "
                     f"votes are kept in {self.folder} and a later start commits them")
        except Exception:  # noqa: BLE001 (_Scheduler.push_to_hub said why in one line)
            pass
        scheduler.stop()  # its exit hook then commits nothing more


def _scheduler(shared_lock, on_error, **kwargs):
    """huggingface_hub's CommitScheduler with two changes: its lock is HubSync's (the appends and its listing of the
    folder exclude each other), and a failed commit is one line through `on_error`, not a logged error and an
    exception raised in a background future. Imported here: huggingface_hub loads only when the mirror is on."""
    from huggingface_hub import CommitScheduler

    class Scheduler(CommitScheduler):
        # CommitScheduler.__init__ assigns a Lock() of its own before its thread starts; the setter keeps ours
        lock = property(lambda self: self._shared_lock, lambda self, value: None)

        def __init__(self, **kw):
            self._shared_lock, self._on_error = shared_lock, on_error
            super().__init__(**kw)

        def push_to_hub(self):
            try:
                return super().push_to_hub()
            except Exception as e:  # noqa: BLE001 (the next scheduled commit tries again)
                self._on_error(e)
                return None

    return Scheduler(**kwargs)
