"""A judge's votes in the vote store, and its unreadable replies kept apart; VoteStore (clo.evaluate.store) binds these
as its methods.

    store.record_judgment(Judgment(...))   # False when this judge already judged this pair (a rerun resumes)
    store.judged_keys("judge-model", "clo-pairwise-3")   # pair keys already judged, to skip them
    store.record_unreadable(Judgment(..., outcome="unreadable", reply=raw))   # kept apart, asked again later
    store.unreadable("judge-model", "clo-pairwise-3")    # those replies: attempts so far and when the next is due

Judge votes (clo.evaluate.judge) live in the votes table beside the people's, flagged by `judge` (the judge's model
name; NULL on a person's vote), each with a battle row of its own, so every vote has one. They are exported with the
human votes and kept apart from them everywhere else: clo.evaluate.ratings rates the human votes unless asked for a
judge's, and `vote_counts` (which pairs the Arena draws) counts only people. A verdict and the people's votes on the
same answers meet on `pair_key` (clo.evaluate.battles.pair_key; clo.evaluate.ratings.agreement), and a judge's rerun
skips what it judged.

A verdict asked in both orders (clo.evaluate.judge.run) is one vote: `orders` = 2, `first` and `second` the
verdicts with `variant_a` and with `variant_b` shown first (each "a" or "b", naming the stored sides), `outcome` the
winner both agree on or a tie; `reply` and `reply_second` what the judge said each time. A verdict stored before
(judge_orders NULL) was asked in one order; clo.evaluate.ratings names its judge "<judge> (single order)".

An unreadable reply is no vote: it lives in its own table (`judge_unreadable`), never among the votes, so no rating,
tally or agreement can count it; a readable verdict on the same pair later replaces it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clo import CLOError
from clo.evaluate.battles import insert_vote, now_utc, pair_key
from clo.evaluate.schema import is_unique_violation

if TYPE_CHECKING:
    from clo.evaluate.store import VoteStore

JUDGE_VOTER = "judge"  # the voter of a judge vote: not a person, so no keyed hash and no rate limit
UNREADABLE_REPLY_CHARS = 500  # an unreadable reply is kept this long (its start, then "…")


@dataclass
class Judgment:
    """A judge's verdict on two answers to one prompt: `variant_a` was shown as the first candidate, `variant_b` as
    the second (and, with `orders` = 2, the other way round too: `first` and `second` are the two verdicts, "a" or
    "b"); outcome "a", "b" or "tie" (the judge is not asked when the answers are identical), or "unreadable" for a
    reply kept by `record_unreadable` (never a vote)."""

    judge: str  # the judge's model name at its endpoint
    protocol: str  # the prompt and parsing it was asked with (clo.evaluate.judge.Protocol.name)
    language: str
    prompt: str
    variant_a: str
    variant_b: str
    answer_a: str
    answer_b: str
    outcome: str
    reply: str | None = None  # what the judge answered (a label, with its probability when log-probs were read)
    hash_a: str | None = None
    hash_b: str | None = None
    engine: str | None = None
    orders: int | None = None  # 2: asked in both orders; None: one order (verdicts stored before both were asked)
    first: str | None = None  # the verdict with variant_a shown first ("a" or "b"; None for identical answers)
    second: str | None = None  # the verdict with variant_b shown first, naming the same sides
    reply_second: str | None = None
    base_model: str | None = None  # the base model behind both answers (clo.evaluate.battles.create_battle's `base`)
    base_hash: str | None = None
    source_a: str | None = None  # "owner/name@commit" of a variant fetched from the hub
    source_b: str | None = None

    @property
    def pair_key(self) -> str:
        return pair_key(self.language, self.prompt, self.variant_a, self.answer_a, self.variant_b, self.answer_b)


def record_judgment(store: VoteStore, judgment: Judgment) -> bool:
    """Store a judge's verdict as a judge vote (with a battle row of its own, so every vote has one); returns
    False, storing nothing, when this judge already judged this pair under this protocol."""
    j = judgment
    if j.outcome not in ("a", "b", "tie"):
        raise CLOError(f"unknown judge outcome {j.outcome!r}; a judge answers a, b or tie")
    if not j.judge or not j.judge.strip():
        raise CLOError("a judge vote needs the judge's name (its model name at the endpoint)")
    if j.orders not in (None, 1, 2) or any(v not in (None, "a", "b") for v in (j.first, j.second)):
        raise CLOError(f"a judgment in both orders has orders 2 and verdicts a or b, got {j.orders}, {j.first!r}, "
                       f"{j.second!r}")
    if j.variant_a == j.variant_b:
        raise CLOError(f"a judgment puts {j.variant_a!r} against itself")
    store._check_prompt(j.prompt)
    key, now = j.pair_key, now_utc()
    battle = {"id": str(uuid.uuid4()), "created_utc": now.isoformat(), "expires_utc": now.isoformat(),
              "voter": JUDGE_VOTER, "language": j.language, "prompt": j.prompt, "variant_a": j.variant_a,
              "variant_b": j.variant_b, "answer_a": j.answer_a, "answer_b": j.answer_b, "hash_a": j.hash_a,
              "hash_b": j.hash_b, "engine": j.engine, "blind": 1, "lang_a": None, "lang_b": None, "voter_address": None,
              "langid_version": None, "base_model": j.base_model, "base_hash": j.base_hash,
              "source_a": j.source_a, "source_b": j.source_b}
    try:
        with store._transaction() as cur:
            cur.execute(store._sql("SELECT 1 FROM votes WHERE judge = ? AND judge_protocol = ? AND pair_key = ?"),
                        (j.judge, j.protocol, key))
            if cur.fetchone():
                return False
            store._insert(cur, "battles", battle)
            insert_vote(store, cur, battle, j.outcome, now, voter=JUDGE_VOTER, judge=j.judge, protocol=j.protocol,
                        reply=j.reply, orders=(j.orders, j.first, j.second, j.reply_second))
            cur.execute(store._sql("DELETE FROM judge_unreadable WHERE judge = ? AND judge_protocol = ? "
                                   "AND pair_key = ?"), (j.judge, j.protocol, key))
    except Exception as e:  # the unique index, when another process stored the same judgment first
        if is_unique_violation(e):
            return False
        raise
    return True


def judged_keys(store: VoteStore, judge: str, protocol: str) -> set[str]:
    """The pair keys `judge` has judged under `protocol`: a rerun skips them."""
    if store.blank or "judge" not in store._read("SELECT * FROM votes WHERE 1 = 0")[1]:  # a store before judges
        return set()
    rows, _ = store._read("SELECT pair_key FROM votes WHERE judge = ? AND judge_protocol = ?", (judge, protocol))
    return {r[0] for r in rows}


def record_unreadable(store: VoteStore, judgment: Judgment, first_retry_s: float = 60.0,
                      max_retry_s: float = 3600.0) -> int:
    """Keep a judge's unreadable reply to a pair (`judgment.reply`, its first UNREADABLE_REPLY_CHARS), apart from
    the votes; the pair is due again `first_retry_s` after its first attempt, twice as long after each further
    one, at most `max_retry_s`. Returns the attempts made on it so far."""
    j = judgment
    if j.outcome != "unreadable":
        raise CLOError(f"record_unreadable keeps unreadable replies, not a verdict {j.outcome!r}")
    reply = str(j.reply or "")
    if len(reply) > UNREADABLE_REPLY_CHARS:
        reply = reply[:UNREADABLE_REPLY_CHARS] + "…"
    key, now = j.pair_key, now_utc()
    try:
        with store._transaction() as cur:
            cur.execute(store._sql("SELECT attempts, first_utc FROM judge_unreadable WHERE judge = ? AND "
                                   "judge_protocol = ? AND pair_key = ?"), (j.judge, j.protocol, key))
            row = cur.fetchone()
            attempts, first = (row[0] + 1, row[1]) if row else (1, now.isoformat())
            wait = min(max_retry_s, first_retry_s * 2 ** (attempts - 1))
            due = (now + dt.timedelta(seconds=wait)).isoformat()
            if row:
                cur.execute(store._sql("UPDATE judge_unreadable SET reply = ?, attempts = ?, last_utc = ?, "
                                       "next_utc = ? WHERE judge = ? AND judge_protocol = ? AND pair_key = ?"),
                            (reply, attempts, now.isoformat(), due, j.judge, j.protocol, key))
            else:
                store._insert(cur, "judge_unreadable", {
                    "judge": j.judge, "judge_protocol": j.protocol, "pair_key": key, "language": j.language,
                    "reply": reply, "attempts": attempts, "first_utc": first, "last_utc": now.isoformat(),
                    "next_utc": due})
    except Exception as e:  # the primary key, when another replica kept the same pair's first reply just now
        if is_unique_violation(e):
            return 1
        raise
    return attempts


def unreadable(store: VoteStore, judge: str | None = None, protocol: str | None = None):
    """The unreadable replies kept (of `judge` under `protocol`, when given) as a pandas DataFrame: judge,
    judge_protocol, pair_key, language, reply, attempts, first_utc, last_utc, next_utc (when it is due again)."""
    import pandas as pd

    columns = ["judge", "judge_protocol", "pair_key", "language", "reply", "attempts", "first_utc", "last_utc",
               "next_utc"]
    if store.blank or not store._has_table("judge_unreadable"):
        return pd.DataFrame(columns=columns)
    where = [(c, v) for c, v in (("judge", judge), ("judge_protocol", protocol)) if v is not None]
    query = f"SELECT {', '.join(columns)} FROM judge_unreadable"
    if where:
        query += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
    rows, _ = store._read(query + " ORDER BY last_utc", tuple(v for _, v in where))
    return pd.DataFrame(rows, columns=columns)
