"""Judging many pairs: each pair's order drawn, the judge asked in parallel, every verdict stored as a judge vote.

    items = battle_items(store.votes())                      # the people's blind battles, one item per pair of answers
    run = judge_items(items, client, store)                  # many in flight; stored as they arrive; a rerun resumes
    results = judge_results(store.votes(), items, client.model, PAIRWISE.name, "clo-ko", "sft-ko")

Which variant the judge sees as A is drawn per pair (seeded, `shown_order`, stored as the vote's `variant_a`), and
two identical answers are a tie without asking. A verdict is a judge vote in the vote store (clo.evaluate.store): the
judge's model name, the prompt, both answers, the order shown and the outcome; a rerun skips every pair the same judge
already judged under the same protocol. An unreadable reply is kept with its pair, never a vote
(`VoteStore.record_unreadable`: its first 500 characters), so a rerun asks again; the background judge
(`due_only=True`) asks it again only when its retry is due, 1, 2, 4 … minutes after the last attempt (at most
`RETRY_MAX_S`, `RETRY_ATTEMPTS` attempts in all), so an unreadable pair is not re-asked with every new vote.

A transport failure (JudgeError: server down, an HTTP error after the client's retries, no answer in time) stops the
run: what is in flight finishes, every verdict made is kept, and one sentence says what happened and that a rerun
resumes. `judge_results` and `first_shown_share` are the judge's numbers: its win rate with a bootstrap interval,
length-controlled, and how often it named the answer shown first (position bias).
"""

from __future__ import annotations

import concurrent.futures as futures
import math
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from clo import CLOError
from clo.evaluate.judge.client import JudgeClient, JudgeError
from clo.evaluate.battles import pair_key
from clo.evaluate.judgments import Judgment

RETRY_FIRST_S = 60.0  # an unreadable pair is due again a minute after its first attempt, doubling after each one
RETRY_MAX_S = 3600.0  # but never more than an hour later
RETRY_ATTEMPTS = 8  # and after this many unreadable replies only an explicit run (CLI, the admin's job) asks again


@dataclass
class Item:
    """Two variants' answers to one prompt; `answers` maps each variant to its answer (exactly two)."""

    language: str
    prompt: str
    answers: dict[str, str]
    hashes: dict[str, str | None] = field(default_factory=dict)
    engine: str | None = None

    @property
    def key(self) -> str:
        (va, aa), (vb, ab) = self.answers.items()
        return pair_key(self.language, self.prompt, va, aa, vb, ab)


def shown_order(item: Item, seed: int = 0) -> tuple[str, str]:
    """Which variant is shown first: drawn per pair from `seed` and the pair's key, so a rerun shows it alike."""
    names = sorted(item.answers)
    return tuple(random.Random(f"{seed}:{item.key}").sample(names, 2))


@dataclass
class JudgeRun:
    """What a run did: verdicts stored now, pairs skipped (already judged), identical pairs (ties, not asked),
    unreadable replies (kept apart from the votes, asked again later), pairs left waiting (their last reply was
    unreadable and their retry is not due yet), and the tokens the judge counted."""

    judged: int = 0
    skipped: int = 0
    identical: int = 0
    unreadable: list[str] = field(default_factory=list)
    waiting: int = 0
    tokens: int = 0
    seconds: float = 0.0


def judge_items(items: list[Item], client: JudgeClient, store, seed: int = 0,
                progress: Callable[[int, int], None] | None = None, due_only: bool = False) -> JudgeRun:
    """Judge every item not yet judged by this judge (`client.model`, its protocol), `client.concurrency` at a
    time, storing each verdict as it arrives, and each unreadable reply apart (`VoteStore.record_unreadable`).
    With `due_only` (the background judge) a pair whose last reply was unreadable waits until its retry is due
    (`waiting`). On a JudgeError no new pair is sent, the ones in flight finish and are stored, and a CLOError says
    how many were kept and that a rerun resumes."""
    protocol = client.protocol
    done = store.judged_keys(client.model, protocol.name)
    waiting = not_due(store, client.model, protocol.name) if due_only else set()
    run, todo, started = JudgeRun(), [], time.perf_counter()
    for item in items:
        if len(item.answers) != 2:
            raise CLOError(f"a judged pair has exactly two answers, got {len(item.answers)}")
        if item.key in done:
            run.skipped += 1
            continue
        done.add(item.key)  # the same pair twice in one run is judged once
        if item.key in waiting:
            run.waiting += 1
            continue
        first, second = shown_order(item, seed)
        if item.answers[first] == item.answers[second]:
            run.identical += store.record_judgment(_judgment(item, client, first, second, "tie", "identical answers"))
            continue
        todo.append((item, first, second))

    failure: JudgeError | None = None
    lock = threading.Lock()

    def ask(job):
        item, first, second = job
        return job, client.ask(item.prompt, item.answers[first], item.answers[second])

    with futures.ThreadPoolExecutor(max_workers=client.concurrency, thread_name_prefix="judge") as pool:
        pending, queue = set(), iter(todo)
        while True:
            while failure is None and len(pending) < client.concurrency and (job := next(queue, None)) is not None:
                pending.add(pool.submit(ask, job))
            if not pending:
                break
            finished, pending = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for f in finished:
                try:
                    (item, first, second), verdict = f.result()
                except JudgeError as e:
                    failure = failure or e
                    continue
                with lock:
                    run.tokens += verdict.tokens
                    if verdict.winner is None:
                        run.unreadable.append(verdict.reply)
                        store.record_unreadable(_judgment(item, client, first, second, "unreadable", verdict.reply),
                                                RETRY_FIRST_S, RETRY_MAX_S)
                    else:
                        outcome = "a" if verdict.winner == 0 else "b"
                        run.judged += store.record_judgment(_judgment(item, client, first, second, outcome, verdict.reply))
                    if progress:
                        progress(run.judged + len(run.unreadable), len(todo))
    run.seconds = time.perf_counter() - started
    if failure is not None:
        raise CLOError(f"judging stopped: {failure}; the {run.judged + run.identical} verdict(s) made before it are kept in "
                       f"{store.where}, and judging again resumes (judged pairs are skipped)")
    return run


def not_due(store, judge: str, protocol: str) -> set[str]:
    """The pairs whose last reply from `judge` was unreadable and whose retry is not due yet (or that had
    RETRY_ATTEMPTS attempts): the background judge leaves them alone."""
    kept = store.unreadable(judge, protocol)
    now = datetime.now(timezone.utc).isoformat()
    return set(kept.loc[(kept["next_utc"] > now) | (kept["attempts"] >= RETRY_ATTEMPTS), "pair_key"])


def next_retry_s(store, judge: str, protocol: str, keys: set[str] | None = None) -> float | None:
    """Seconds until the first unreadable pair of `judge` (among `keys`, when given) is due again (0 when one is),
    None when none will be."""
    kept = store.unreadable(judge, protocol)
    kept = kept[(kept["attempts"] < RETRY_ATTEMPTS) & (kept["pair_key"].isin(keys) if keys is not None else True)]
    if kept.empty:
        return None
    due = datetime.fromisoformat(min(kept["next_utc"]))
    return max(0.0, (due - datetime.now(timezone.utc)).total_seconds())


def _judgment(item: Item, client: JudgeClient, first: str, second: str, outcome: str, reply: str) -> Judgment:
    return Judgment(judge=client.model, protocol=client.protocol.name, language=item.language, prompt=item.prompt,
                    variant_a=first, variant_b=second, answer_a=item.answers[first], answer_b=item.answers[second],
                    outcome=outcome, reply=reply, hash_a=item.hashes.get(first), hash_b=item.hashes.get(second),
                    engine=item.engine)


def first_shown_share(verdicts) -> float:
    """The share of a judge's verdicts (ties left out) that named the answer it was shown first: about ½ for a judge
    without position bias, 1 for one that always names the first (NaN without verdicts)."""
    decided = verdicts[verdicts["outcome"].isin(["a", "b"])]
    return float((decided["outcome"] == "a").mean()) if len(decided) else math.nan


def battle_items(votes, language: str | None = None) -> list[Item]:
    """The people's blind battles in the vote store (`VoteStore.votes()`), as items for a judge: one per pair of
    answers (a pair several people voted on is judged once), oldest first; `language` keeps one language's."""
    from clo.evaluate.ratings import rater_votes

    if votes.empty:
        return []
    rows = rater_votes(votes)
    if language is not None:
        rows = rows[rows["language"] == language]
    rows = rows.sort_values("created_utc", kind="stable").drop_duplicates("pair_key")
    return [Item(r.language, r.prompt, {r.variant_a: r.answer_a, r.variant_b: r.answer_b},
                 {r.variant_a: _text_or_none(r.hash_a), r.variant_b: _text_or_none(r.hash_b)}, _text_or_none(r.engine))
            for r in rows.itertuples() if r.variant_a != r.variant_b]


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) and value else None


def judge_results(votes, items: list[Item], judge: str, protocol: str, first: str, second: str,
                  n_bootstrap: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Per language of `items`: the win rate of `first` against `second` by this judge's stored verdicts on these
    items (`clo.evaluate.agreement.win_rate_interval`) and the length-controlled rate (`length_controlled_win_rate`)."""
    from clo.evaluate.agreement import length_controlled_win_rate, win_rate_interval, winner_labels

    keys = {item.key for item in items}
    mine = votes[(votes["judge"] == judge) & (votes["judge_protocol"] == protocol) & votes["pair_key"].isin(keys)]
    out = {}
    for language in dict.fromkeys(item.language for item in items):
        rows = mine[mine["language"] == language]
        winner = winner_labels(rows)
        scores = (winner == first).astype(float) + 0.5 * (winner == "tie")
        first_is_a = rows["variant_a"] == first
        length_first = rows["answer_a"].str.len().where(first_is_a, rows["answer_b"].str.len())
        length_second = rows["answer_b"].str.len().where(first_is_a, rows["answer_a"].str.len())
        result = win_rate_interval(scores.to_numpy(), n_bootstrap, seed=seed)
        result["length_controlled"] = length_controlled_win_rate(scores.to_numpy(), length_first.to_numpy(),
                                                                 length_second.to_numpy())
        result["first_shown"] = first_shown_share(rows)
        out[language] = result
    return out

