"""Judging many pairs: each pair asked in both orders, the judge asked in parallel, every verdict stored as a judge vote.

    items = battle_items(store.votes())                      # the people's blind battles, one item per pair of answers
    run = judge_items(items, client, store)                  # many in flight; stored as they arrive; a rerun resumes
    results = judge_results(store.votes(), items, client.model, PAIRWISE.name, "clo-ko", "sft-ko")

The judge sees every pair twice, once each way round (as MT-Bench and Arena-Hard do): an LLM judge tends to name the
answer shown first, and one order alone would report that tendency as a preference. The pair's verdict is the variant
both orders name, a tie when they differ; how often they agree is the judge's position consistency (100% for a judge
the order never sways, 0% for one that always names the first shown). Which order is asked first is drawn per pair
(seeded, `shown_order`, stored as the vote's `variant_a`), and two identical answers are a tie without asking. A
verdict is a judge vote in the vote store (clo.evaluate.store): the judge's model name, the prompt, both answers, the
two verdicts and replies and the outcome; a rerun skips every pair the same judge already judged under the same
protocol. An unreadable reply is kept with its pair, never a vote
(`VoteStore.record_unreadable`: its first 500 characters), so a rerun asks again; the background judge
(`due_only=True`) asks it again only when its retry is due, 1, 2, 4 … minutes after the last attempt (at most
`RETRY_MAX_S`, `RETRY_ATTEMPTS` attempts in all), so an unreadable pair is not re-asked with every new vote.

A transport failure (JudgeError: server down, an HTTP error after the client's retries, no answer in time) stops the
run: what is in flight finishes, every verdict made is kept, and one sentence says what happened and that a rerun
resumes. `judge_results`, `position_consistency` and `first_shown_share` are the judge's numbers: its win rate with a
bootstrap interval, length-controlled, how often its two orders agree and how often it named the answer shown first.
"""

from __future__ import annotations

import concurrent.futures as futures
import math
import random
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
CONSISTENCY_FLOOR = 0.5  # below this, the two orders of a pair agree less often than a coin would: the order decides


@dataclass
class Item:
    """Two variants' answers to one prompt; `answers` maps each variant to its answer (exactly two)."""

    language: str
    prompt: str
    answers: dict[str, str]
    hashes: dict[str, str | None] = field(default_factory=dict)
    engine: str | None = None
    base: tuple[str | None, str | None] = (None, None)  # the base model's name and fingerprint, kept with the verdict
    sources: dict[str, str] = field(default_factory=dict)  # "owner/name@commit" of a variant fetched from the hub

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
    """What a run did: verdicts stored now (`consistent` of them named the same winner in both orders), pairs
    skipped (already judged), identical pairs (ties, not asked), unreadable replies (kept apart from the votes, the
    pair asked again later; `unreadable_pairs` pairs had one), pairs left waiting (their last reply was unreadable
    and their retry is not due yet), and the tokens the judge counted."""

    judged: int = 0
    consistent: int = 0
    skipped: int = 0
    identical: int = 0
    unreadable: list[str] = field(default_factory=list)
    unreadable_pairs: int = 0
    waiting: int = 0
    tokens: int = 0
    seconds: float = 0.0


def judge_items(items: list[Item], client: JudgeClient, store, seed: int = 0,
                progress: Callable[[int, int], None] | None = None, due_only: bool = False) -> JudgeRun:
    """Judge every item not yet judged by this judge (`client.model`, its protocol) in both orders,
    `client.concurrency` replies at a time, storing each pair's verdict as soon as both orders are in (the winner
    both name, a tie when they differ), and an unreadable reply apart (`VoteStore.record_unreadable`: the pair is
    asked again, both ways). With `due_only` (the background judge) a pair whose last reply was unreadable waits
    until its retry is due (`waiting`). On a JudgeError no new question is sent, the ones in flight finish, the pairs
    complete by then are stored, and a CLOError says how many were kept and that a rerun resumes."""
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
            run.identical += store.record_judgment(_judgment(item, client, first, second, "tie", "identical answers",
                                                             orders=2))
            continue
        todo += [(item, first, second, 0), (item, second, first, 1)]  # each pair both ways, drawn order first

    failure: JudgeError | None = None
    halves: dict[str, dict[int, tuple]] = {}  # a pair's verdicts so far, by order (0: as drawn, 1: swapped)

    def ask(job):
        item, shown_a, shown_b, _ = job
        return job, client.ask(item.prompt, item.answers[shown_a], item.answers[shown_b])

    def settle(item: Item, first: str, second: str) -> None:
        """Both orders of a pair are in: store its vote, or (a reply unreadable) keep the reply apart."""
        verdicts = halves.pop(item.key)
        unreadable = [v.reply for _, v in verdicts.values() if v.winner is None]
        if unreadable:
            run.unreadable += unreadable
            run.unreadable_pairs += 1
            store.record_unreadable(_judgment(item, client, first, second, "unreadable", unreadable[0]),
                                    RETRY_FIRST_S, RETRY_MAX_S)
            return
        # each verdict names a variant; as the stored sides: "a" = first (variant_a), "b" = second
        named = {order: (job[1] if v.winner == 0 else job[2]) for order, (job, v) in verdicts.items()}
        side = {first: "a", second: "b"}
        one, other = side[named[0]], side[named[1]]
        run.consistent += one == other
        outcome = one if one == other else "tie"
        run.judged += store.record_judgment(_judgment(item, client, first, second, outcome, verdicts[0][1].reply,
                                                      orders=2, verdicts=(one, other),
                                                      reply_second=verdicts[1][1].reply))

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
                    job, verdict = f.result()
                except JudgeError as e:
                    failure = failure or e
                    continue
                item, order = job[0], job[3]
                run.tokens += verdict.tokens
                halves.setdefault(item.key, {})[order] = (job, verdict)
                if len(halves[item.key]) == 2:
                    settle(item, *(job[1:3] if order == 0 else (job[2], job[1])))
                    if progress:
                        progress(run.judged + run.unreadable_pairs, len(todo) // 2)
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


def _judgment(item: Item, client: JudgeClient, first: str, second: str, outcome: str, reply: str,
              orders: int | None = None, verdicts: tuple = (None, None), reply_second: str | None = None) -> Judgment:
    return Judgment(judge=client.model, protocol=client.protocol.name, language=item.language, prompt=item.prompt,
                    variant_a=first, variant_b=second, answer_a=item.answers[first], answer_b=item.answers[second],
                    outcome=outcome, reply=reply, hash_a=item.hashes.get(first), hash_b=item.hashes.get(second),
                    engine=item.engine, orders=orders, first=verdicts[0], second=verdicts[1],
                    reply_second=reply_second, base_model=item.base[0], base_hash=item.base[1],
                    source_a=item.sources.get(first), source_b=item.sources.get(second))


def _both_orders(verdicts):
    """The verdicts asked in both orders whose answers differed (judge_first and judge_second set)."""
    if "judge_first" not in verdicts.columns:
        return verdicts.iloc[:0]
    return verdicts[verdicts["judge_first"].isin(["a", "b"]) & verdicts["judge_second"].isin(["a", "b"])]


def position_consistency(verdicts) -> tuple[float, int]:
    """How often a judge's two orders of a pair named the same winner, over its verdicts asked in both orders
    (identical answers and single-order verdicts left out), and over how many: (1.0, n) for a judge the order never
    sways, (0.0, n) for one that always names the answer shown first, (NaN, 0) without such verdicts."""
    both = _both_orders(verdicts)
    if not len(both):
        return math.nan, 0
    return float((both["judge_first"] == both["judge_second"]).mean()), len(both)


def first_shown_share(verdicts) -> float:
    """The share of a judge's decisions that named the answer it was shown first: about ½ for a judge without
    position bias, 1 for one that always names the first (NaN without any). A verdict asked in both orders counts
    twice (variant_a shown first, then variant_b); a single-order verdict once, ties left out."""
    both = _both_orders(verdicts)
    single = verdicts.drop(index=both.index)
    if "judge_orders" in single.columns:
        single = single[single["judge_orders"].isna()]
    single = single[single["outcome"].isin(["a", "b"])]
    named_first = int((single["outcome"] == "a").sum())
    if len(both):
        named_first += int((both["judge_first"] == "a").sum() + (both["judge_second"] == "b").sum())
    decisions = 2 * len(both) + len(single)
    return named_first / decisions if decisions else math.nan


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
                 {r.variant_a: _text_or_none(r.hash_a), r.variant_b: _text_or_none(r.hash_b)}, _text_or_none(r.engine),
                 (_text_or_none(r.base_model), _text_or_none(r.base_hash)),
                 {v: s for v, s in ((r.variant_a, _text_or_none(r.source_a)), (r.variant_b, _text_or_none(r.source_b))) if s})
            for r in rows.itertuples() if r.variant_a != r.variant_b]


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) and value else None


def gate(rows, first: str, detect):
    """The language gate over stored verdicts: per row, 1.0 when only `first`'s answer is in the prompt's language,
    0.0 when only the other's is, NaN when it does not decide (both in it, neither, or either answer's language not
    told: unknown, an echo of the prompt or a loop never decides). `detect(text, language, prompt)` is the served
    model's language ID (clo.app.context.Services.detect's reading, clo.evaluate.langid)."""
    import numpy as np

    from clo.evaluate.langid import ECHO, LOOP, UNKNOWN

    out = np.full(len(rows), np.nan)
    for k, (language, prompt, va, aa, ab) in enumerate(zip(rows["language"], rows["prompt"], rows["variant_a"],
                                                           rows["answer_a"], rows["answer_b"])):
        ca, cb = detect(aa, language, prompt).code, detect(ab, language, prompt).code
        if {ca, cb} & {UNKNOWN, ECHO, LOOP} or (ca == language) == (cb == language):
            continue
        a_wins = ca == language
        out[k] = float(a_wins == (va == first))
    return out


def judge_results(votes, items: list[Item], judge: str, protocol: str, first: str, second: str,
                  n_bootstrap: int = 2000, seed: int = 0, detect=None) -> dict[str, dict]:
    """Per language of `items`: the win rate of `first` against `second` by this judge's stored verdicts on these
    items (`clo.evaluate.agreement.win_rate_interval`), the length-controlled rate and, when it cannot be told,
    why (`length_control`: `length_controlled` NaN, `length_note`),
    `position_consistency` (and `both_orders`, the pairs it is over) and `first_shown`.

    With `detect` (the language gate, `gate`), a pair where only one answer is in the prompt's language goes to
    that answer whatever the judge said: the rate, its interval and W/T/L are then the gated ones, `judge_only`
    holds the judge's own (rate, lower, upper, wins, ties, losses), `gate_decided` how many pairs the gate
    decided and `gate_agreed` on how many of them the judge had named the same winner. The judge is still asked
    about every pair, so that its own rate can be shown beside."""
    import numpy as np

    from clo.evaluate.agreement import length_control, side_scores, win_rate_interval

    keys = {item.key for item in items}
    mine = votes[(votes["judge"] == judge) & (votes["judge_protocol"] == protocol) & votes["pair_key"].isin(keys)]
    out = {}
    for language in dict.fromkeys(item.language for item in items):
        rows = mine[mine["language"] == language]
        scores, length_first, length_second = side_scores(rows, rows["variant_a"] == first)
        judged = win_rate_interval(scores, n_bootstrap, seed=seed)
        decided = gate(rows, first, detect) if detect is not None else np.full(len(rows), np.nan)
        gated = np.where(np.isnan(decided), scores, decided)
        result = win_rate_interval(gated, n_bootstrap, seed=seed) if detect is not None else dict(judged)
        result["judge_only"] = {k: judged[k] for k in ("rate", "lower", "upper", "wins", "ties", "losses")}
        result["gate_decided"] = int((~np.isnan(decided)).sum())
        result["gate_agreed"] = int((decided == scores)[~np.isnan(decided)].sum())
        result["length_controlled"], result["length_note"] = length_control(gated, length_first, length_second)
        result["first_shown"] = first_shown_share(rows)
        result["position_consistency"], result["both_orders"] = position_consistency(rows)
        out[language] = result
    return out

