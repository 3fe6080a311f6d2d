"""People's blind battles and their votes in the vote store; VoteStore (clo.evaluate.store) binds these as its methods.

    battle = store.create_battle(voter="session-1", language="ko", prompt="...", answers={"sft-ko": "...", "clo-ko": "..."})
    battle.answer_a, battle.answer_b                              # what the voter sees; identities stay in the store
    reveal = store.vote(battle.id, "a", voter="session-1")        # once per battle -> {"variant_a": ..., ...}
    store.votes()                                                 # a DataFrame for clo.evaluate.ratings

A battle's identities are kept on the server and returned only by `vote`. Battle ids are random UUIDs tied
to the voter, so a vote cannot be cast on someone else's battle or twice: the votes table holds at most one row
per battle (a UNIQUE constraint, so it holds across processes and replicas). The voter and the address are kept as
keyed hashes only (`VoteStore.pseudonyms`), and votes are limited per voter and per address (`Limits`, checked by
`VoteStore._check_rate`), so a fresh session does not reset a limit.
Outcomes: "a" (left better), "b" (right better), "tie", "both_bad".

Every vote carries `pair_key` (`pair_key()`: language, prompt, both variants and answers, sides ignored), on which a
judge's verdict (clo.evaluate.judgments) and the people's votes on the same answers meet. `insert_vote` writes a
vote row, a person's or a judge's, and `vote_counts` (which pairs the Arena draws) counts only people.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clo import CLOError
from clo.evaluate.langid import VERSION as LANGID_VERSION
from clo.evaluate.ratings import UNKNOWN_BASE
from clo.evaluate.schema import VOTE_COLUMNS, is_unique_violation

if TYPE_CHECKING:
    from clo.evaluate.store import VoteStore

OUTCOMES = ("a", "b", "tie", "both_bad")
PRUNE_EVERY_S = 60.0  # expired, unvoted battles are deleted at most this often (when a battle is made)


@dataclass
class Battle:
    """What a voter may see: an id and two anonymous answers (identities are kept in the store)."""

    id: str
    language: str
    prompt: str
    answer_a: str
    answer_b: str
    expires_utc: str


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def pair_key(language: str, prompt: str, variant_a: str, answer_a: str, variant_b: str, answer_b: str) -> str:
    """What was judged, whichever side each answer was shown on: sha256 of the language, the prompt and the two
    (variant, answer) pairs in name order. A person's vote and a judge's verdict on the same answers share it."""
    sides = sorted([(str(variant_a), str(answer_a)), (str(variant_b), str(answer_b))])
    return hashlib.sha256(json.dumps([language, prompt, sides], ensure_ascii=False).encode()).hexdigest()[:32]


def vote_counts(store: VoteStore, language: str, base: str | None = None) -> dict[frozenset, int]:
    """People's blind votes in `language` per pair of variants (judge votes are not counted); `base` keeps those on
    one base model (its key, clo.evaluate.ratings.base_key: the fingerprint, else the name)."""
    on_base, args = ("", (language,)) if base is None else (
        " AND COALESCE(base_hash, base_model, ?) = ?", (language, UNKNOWN_BASE, base))
    rows, _ = store._read("SELECT variant_a, variant_b, COUNT(*) FROM votes WHERE language = ? AND blind = 1 "
                          f"AND judge IS NULL{on_base} GROUP BY variant_a, variant_b", args)
    counts: dict[frozenset, int] = {}
    for a, b, n in rows:
        counts[frozenset((a, b))] = counts.get(frozenset((a, b)), 0) + n
    return counts


def count(store: VoteStore) -> tuple[int, str | None]:
    """(number of votes, id of the newest): changes exactly when a vote is added, for caches keyed on it."""
    if store.blank:
        return 0, None
    rows, _ = store._read("SELECT COUNT(*), MAX(created_utc || id) FROM votes")
    return int(rows[0][0]), rows[0][1]


def draw_pair(store: VoteStore, variants: list[str], language: str, exclude=(), base: str | None = None
              ) -> tuple[str, str]:
    """Two variants, favouring pairs with fewer blind votes in `language` on base model `base` (weight
    1 / (1 + votes)); pairs in `exclude` (a collection of frozensets) are not drawn."""
    if len(set(variants)) < 2:
        raise CLOError("a battle needs at least two variants")
    counts = vote_counts(store, language, base)
    names = sorted(set(variants))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if frozenset((a, b)) not in exclude]
    if not pairs:
        raise CLOError("every pair of variants has been tried")
    weights = [1.0 / (1 + counts.get(frozenset(p), 0)) for p in pairs]
    return store.rng.choices(pairs, weights)[0]


def create_battle(store: VoteStore, voter: str, language: str, prompt: str, answers: dict[str, str],
                  hashes: dict[str, str | None] | None = None, engine: str | None = None, blind: bool = True,
                  detected: dict[str, str] | None = None, address: str | None = None,
                  base: tuple[str, str | None] | None = None, placed: tuple[str, str] | None = None,
                  leak: str | None = None, sources: dict[str, str] | None = None) -> Battle:
    """Store a battle between the two variants of `answers`, placed left/right at random (or as `placed` says: a
    caller that streamed the answers drew the sides with `place` before showing them), owned by session
    `voter` from `address`; `detected` holds each answer's language code (clo.evaluate.langid), kept with the vote and
    the detector's version so no one detects it again unless the detector has changed since; `base` is the base
    model behind every variant (its name and fingerprint, `clo.evaluate.ratings.base_key`), kept with the vote;
    `leak`, why the battle is not blind (clo.evaluate.leaks), kept with the vote, which is then never rated;
    `sources`, "owner/name@commit" of each variant fetched from the hub (clo.engines.Engine.sources)."""
    if len(answers) != 2:
        raise CLOError(f"a battle has exactly two answers, got {len(answers)}")
    store._check_prompt(prompt)
    if (now_utc() - store.pruned_at).total_seconds() > PRUNE_EVERY_S:  # unvoted battles do not pile up
        prune(store)
    left, right = placed if placed is not None else place(store, answers)
    if {left, right} != set(answers):
        raise CLOError(f"the sides {left!r} and {right!r} are not the battle's variants {sorted(answers)}")
    created = now_utc()
    battle = Battle(str(uuid.uuid4()), language, prompt, answers[left], answers[right],
                    (created + dt.timedelta(seconds=store.limits.battle_ttl_s)).isoformat())
    hashes, detected, sources = hashes or {}, detected or {}, sources or {}
    who, where = store.pseudonyms(voter, address)
    with store._transaction() as cur:
        store._insert(cur, "battles", {
            "id": battle.id, "created_utc": created.isoformat(), "expires_utc": battle.expires_utc, "voter": who,
            "language": language, "prompt": prompt, "variant_a": left, "variant_b": right, "answer_a": battle.answer_a,
            "answer_b": battle.answer_b, "hash_a": hashes.get(left), "hash_b": hashes.get(right), "engine": engine,
            "blind": int(blind), "lang_a": detected.get(left), "lang_b": detected.get(right), "voter_address": where,
            "langid_version": LANGID_VERSION if detected else None, "base_model": (base or (None, None))[0],
            "base_hash": (base or (None, None))[1], "leak": leak, "source_a": sources.get(left),
            "source_b": sources.get(right)})
    return battle


def place(store: VoteStore, pair) -> tuple[str, str]:
    """The two variants of `pair` as (left, right), drawn at random by the store's generator."""
    left, right = store.rng.sample(sorted(pair), 2)
    return left, right


def prune(store: VoteStore) -> int:
    """Delete the battles that expired without a vote (they can no longer be voted on); returns how many."""
    with store._transaction() as cur:
        cur.execute(store._sql("DELETE FROM battles WHERE expires_utc < ? AND id NOT IN (SELECT battle_id FROM votes)"),
                    (now_utc().isoformat(),))
        store.pruned_at = now_utc()
        return cur.rowcount


def discard(store: VoteStore, battle_id: str, voter: str, address: str | None = None) -> None:
    """Drop a battle its voter skipped: it records nothing and can no longer be voted on."""
    with store._transaction() as cur:
        cur.execute(store._sql("DELETE FROM battles WHERE id = ? AND voter = ? AND id NOT IN "
                               "(SELECT battle_id FROM votes)"), (str(battle_id), store.pseudonyms(voter, address)[0]))


def vote(store: VoteStore, battle_id: str, outcome: str, voter: str, address: str | None = None) -> dict:
    """Record the voter's judgment of a battle, once; returns the reveal (both variants and the outcome)."""
    if outcome not in OUTCOMES:
        raise CLOError(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
    who, where = store.pseudonyms(voter, address)
    now = now_utc()
    with store._transaction() as cur:
        cur.execute(store._sql("SELECT * FROM battles WHERE id = ?"), (str(battle_id),))
        row = cur.fetchone()
        if row is None:
            raise CLOError(f"unknown battle {battle_id!r}")
        b = dict(zip([d[0] for d in cur.description], row))
        if b["voter"] != who:
            raise CLOError(f"battle {battle_id} belongs to another session")
        if dt.datetime.fromisoformat(b["expires_utc"]) < now:
            raise CLOError(f"battle {battle_id} expired at {b['expires_utc']}; start a new one")
        cur.execute(store._sql("SELECT 1 FROM votes WHERE battle_id = ?"), (b["id"],))
        if cur.fetchone():
            raise CLOError(f"battle {battle_id} already has a vote")
        store._check_rate(cur, now, "voter", who, store.limits.votes_per_window, "this session")
        if where is not None:
            store._check_rate(cur, now, "voter_address", where, store.limits.votes_per_address, "this network address")
        try:
            insert_vote(store, cur, b, outcome, now, voter=who, voter_address=where)
        except Exception as e:  # the UNIQUE constraint, when another process won the race
            if is_unique_violation(e):
                raise CLOError(f"battle {battle_id} already has a vote") from None
            raise
    return {"battle_id": b["id"], "variant_a": b["variant_a"], "variant_b": b["variant_b"], "outcome": outcome}


def insert_vote(store: VoteStore, cur, battle: dict, outcome: str, created: dt.datetime, voter: str,
                voter_address: str | None = None, judge: str | None = None, protocol: str | None = None,
                reply: str | None = None, orders: tuple = (None, None, None, None)) -> None:
    """Insert the vote on `battle` (its row in battles, as a dict) in the transaction `cur`: the battle's prompt,
    answers, variants (the left one first) and hashes copied beside the outcome and its `pair_key`; `judge`,
    `protocol`, `reply` and `orders` (judge_orders, judge_first, judge_second, judge_reply_second:
    clo.evaluate.judgments) are set on a judge's vote only. A second vote on the battle, or a judge's second on the
    same pair, raises the driver's unique violation (`clo.evaluate.schema.is_unique_violation`)."""
    b = battle
    store._insert(cur, "votes", {
        "id": str(uuid.uuid4()), "battle_id": b["id"], "created_utc": created.isoformat(), "voter": voter,
        "language": b["language"], "prompt": b["prompt"], "variant_a": b["variant_a"], "variant_b": b["variant_b"],
        "answer_a": b["answer_a"], "answer_b": b["answer_b"], "left_variant": b["variant_a"], "outcome": outcome,
        "engine": b["engine"], "hash_a": b["hash_a"], "hash_b": b["hash_b"], "blind": b["blind"],
        "lang_a": b["lang_a"], "lang_b": b["lang_b"], "voter_address": voter_address, "judge": judge,
        "judge_protocol": protocol, "judge_reply": reply, "langid_version": b.get("langid_version"),
        **dict(zip(("judge_orders", "judge_first", "judge_second", "judge_reply_second"), orders)),
        "base_model": b.get("base_model"), "base_hash": b.get("base_hash"), "leak": b.get("leak"),
        "source_a": b.get("source_a"), "source_b": b.get("source_b"),
        "pair_key": pair_key(b["language"], b["prompt"], b["variant_a"], b["answer_a"], b["variant_b"], b["answer_b"])})


def votes(store: VoteStore, language: str | None = None):
    """All votes, people's and judges', as a pandas DataFrame (columns VOTE_COLUMNS; blind as bool; `judge` None
    on a person's vote; `pair_key` computed for votes stored before it was)."""
    import pandas as pd

    if store.blank:
        return pd.DataFrame(columns=list(VOTE_COLUMNS)).astype({"blind": bool})
    columns = list(VOTE_COLUMNS)
    if store.read_only:  # a store of an older schema is not migrated here: its missing columns read as None
        present = set(store._read("SELECT * FROM votes WHERE 1 = 0")[1])
        columns = [c for c in VOTE_COLUMNS if c in present]
    query, args = f"SELECT {', '.join(columns)} FROM votes", ()
    if language:
        query, args = query + " WHERE language = ?", (language,)
    rows, _ = store._read(query + " ORDER BY created_utc, id", args)
    frame = pd.DataFrame(rows, columns=columns)
    for missing in set(VOTE_COLUMNS) - set(columns):
        frame[missing] = None
    frame = frame[list(VOTE_COLUMNS)]
    frame["blind"] = frame["blind"].astype(bool)
    missing = frame["pair_key"].isna()
    if missing.any():
        frame.loc[missing, "pair_key"] = [
            pair_key(*row) for row in frame.loc[missing, ["language", "prompt", "variant_a", "answer_a", "variant_b",
                                                          "answer_b"]].itertuples(index=False)]
    return frame
