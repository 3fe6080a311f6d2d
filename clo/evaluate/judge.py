"""An LLM as judge: AlpacaEval's pairwise protocol over any OpenAI-compatible endpoint, its verdicts stored as votes.

    python -m clo judge --adapters clo-ko,sft-ko --lang ko --prompts sample \\
        --judge-url http://127.0.0.1:8001 --judge-model Qwen/Qwen2.5-72B-Instruct --limit 50

answers the prompts (in the target language, and their English versions) with both variants through the project's
engines, asks the judge which answer of each pair is better, and prints the win rate of the first variant against
the second with a 95% bootstrap interval, per language, and the length-controlled win rate. As a library:

    client = JudgeClient("http://127.0.0.1:8001", "Qwen/Qwen2.5-72B-Instruct")   # health check, constraint chosen
    verdict = client.ask(prompt, first_answer, second_answer)                     # Verdict(winner=0 | 1 | None, ...)
    run = judge_items(items, client, store)                                       # many in flight; stored; resumed

The protocol (the README's "The paper's metric" says why it is written here, not taken from the alpaca_eval package):
the judge sees the instruction and the two answers as candidates A and B, which variant is A is drawn per pair (seeded,
and stored as the vote's `variant_a`), and it names the better one. Two identical answers are a tie without asking.
Every reply is read, never guessed: on a vLLM server the reply is constrained to the two labels (structured outputs,
`{"structured_outputs": {"choice": ["A", "B"]}}`), elsewhere the first token's log-probabilities decide
(`constraint="logprobs"`), or the text must be a label (`"none"`); a reply that is none of these is counted as
unreadable and kept with the pair (`VoteStore.record_unreadable`: its first 500 characters, never a vote), so a
rerun asks again; the background judge (`due_only=True`) asks it again only when its retry is due, 1, 2, 4 …
minutes after the last attempt (at most `RETRY_MAX_S`, `RETRY_ATTEMPTS` attempts in all), so an unreadable pair is
not re-asked with every new vote. A verdict is a judge vote in the vote store (clo.evaluate.store): the
judge's model name, the prompt, both answers, the order shown and the outcome; a rerun skips every pair the same
judge already judged under the same protocol.

A transport failure (server down, an HTTP error after `retries`, no answer within `timeout`) stops the run: what is
in flight finishes, every verdict made is kept, and one sentence says what happened and that a rerun resumes.
The API key, when the endpoint needs one, is read from CLO_JUDGE_API_KEY (never from OPENAI_API_KEY: that key
must not go to whatever URL is given).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import html
import json
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx

from clo import CLOError
from clo.evaluate.store import Judgment, pair_key

CONSTRAINTS = ("auto", "choice", "logprobs", "none")
API_KEY_VARIABLE = "CLO_JUDGE_API_KEY"
RETRY_FIRST_S = 60.0  # an unreadable pair is due again a minute after its first attempt, doubling after each one
RETRY_MAX_S = 3600.0  # but never more than an hour later
RETRY_ATTEMPTS = 8  # and after this many unreadable replies only an explicit run (CLI, the admin's job) asks again


@dataclass(frozen=True)
class Protocol:
    """What the judge is asked and how its reply is read; `name` is stored with every verdict (a changed prompt
    gets a new name, so its verdicts never mix with the old ones)."""

    name: str
    labels: tuple[str, str]
    system: str
    template: str  # {instruction}, {first}, {second}, {label_1}, {label_2}

    def messages(self, instruction: str, first: str, second: str) -> list[dict]:
        """The chat sent to the judge. The visitor's instruction and the two answers are escaped as XML text (`&`,
        `<`, `>` as `&amp;`, `&lt;`, `&gt;`), so none can close the template's `<instruction>` / `<response>` or
        spell a marker written with `<` (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`): the judge's server renders
        the chat itself, tokenizing special-token text as markers, and escaping is what the client can do about it.
        A template's markers without `<` (Mistral's `[INST]`) are beyond this: judge with a ChatML / Llama-3 style model."""
        user = self.template.format(instruction=_as_text(instruction), first=_as_text(first), second=_as_text(second),
                                    label_1=self.labels[0], label_2=self.labels[1])
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def _as_text(text: str) -> str:
    """`text` escaped as XML text: it cannot open or close a tag, nor spell a special token written with `<`."""
    return html.escape(text, quote=False)


PAIRWISE = Protocol(
    name="clo-pairwise-2",  # 2: the embedded texts are escaped (clo-pairwise-1 sent them raw)
    labels=("A", "B"),
    system=("You judge the work of AI assistants. You are given one instruction and two responses to it, written by "
            "two different assistants. Decide which response the person who wrote the instruction would rather "
            "receive: the one that does what was asked, correctly, helpfully and clearly. A longer response is not "
            "better for being longer, and the order of the two says nothing about their quality. The texts are "
            "escaped as XML: &lt;, &gt; and &amp; stand for <, > and &."),
    template=("<instruction>\n{instruction}\n</instruction>\n\n"
              "<response id=\"{label_1}\">\n{first}\n</response>\n\n"
              "<response id=\"{label_2}\">\n{second}\n</response>\n\n"
              "Which response is better? Reply with its id alone, {label_1} or {label_2}, and nothing else."),
)


@dataclass
class Verdict:
    """The judge's reply to one pair: winner 0 (the first shown), 1 (the second) or None (unreadable)."""

    winner: int | None
    reply: str  # what was read: the label, with its probability when log-probabilities came back
    tokens: int = 0  # prompt + completion tokens, as the server counted them (0 when it did not say)
    seconds: float = 0.0


class JudgeError(CLOError):
    """The judge could not be asked (unreachable, an HTTP error, no answer in time): the run stops."""


class JudgeClient:
    """A pairwise judge behind an OpenAI-compatible `/v1/chat/completions`, one pooled HTTP client for all threads.

    constraint: "choice" (vLLM structured outputs: the reply is one of the labels), "logprobs" (one token, the
    labels' log-probabilities compared), "none" (free text that must be a label), or "auto": "choice" when the
    server is vLLM (its /v1/models says `owned_by: vllm`), else "logprobs".
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, constraint: str = "auto",
                 timeout: float = 60.0, concurrency: int = 16, retries: int = 2, protocol: Protocol = PAIRWISE):
        if constraint not in CONSTRAINTS:
            raise CLOError(f"unknown judge constraint {constraint!r}; choose from {', '.join(CONSTRAINTS)}")
        if not model or not model.strip():
            raise CLOError("name the judge's model (--judge-model NAME, as its server lists it in /v1/models)")
        if not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise CLOError(f"the judge timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise CLOError(f"judgments in flight must be a whole number ≥ 1, got {concurrency!r}")
        self.url = _base_url(url)
        self.model, self.timeout, self.concurrency, self.retries, self.protocol = model, timeout, concurrency, retries, protocol
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
                                 limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self.constraint = self._check(constraint)

    def _check(self, constraint: str) -> str:
        """Health check: the server answers /v1/models and serves the model; returns the constraint to use."""
        body = self._request("GET", "/v1/models")
        models = body.get("data") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise JudgeError(f"the judge server at {self.url} answered /v1/models with {_excerpt(json.dumps(body))}, "
                             "not a model list: is it an OpenAI-compatible server?")
        served = {m.get("id"): m for m in models if isinstance(m, dict)}
        if self.model not in served:
            raise CLOError(f"the judge server at {self.url} does not serve {self.model!r}; it serves "
                           f"{', '.join(map(str, served)) or 'nothing'}: fix --judge-model")
        if constraint == "auto":
            return "choice" if served[self.model].get("owned_by") == "vllm" else "logprobs"
        return constraint

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        """One request, re-sent up to `retries` times on a refused connection, HTTP 429 or 5xx (0.5 s, 1 s, ...);
        a timeout is not re-sent. Raises JudgeError with one sentence."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.http.request(method, path, json=payload)
            except httpx.TimeoutException:
                raise JudgeError(f"the judge at {self.url} did not answer within {self.timeout:g} s: raise "
                                 "--judge-timeout, or lower --concurrency") from None
            except httpx.TransportError as e:
                if not last:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise JudgeError(f"the judge server at {self.url} is unreachable ({_reason(e)}): start it, or fix "
                                 "--judge-url") from None
            if response.status_code >= 400:
                if not last and (response.status_code == 429 or response.status_code >= 500):
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise JudgeError(f"the judge at {self.url} answered HTTP {response.status_code}: "
                                 f"{_server_message(response)}")
            try:
                return response.json()
            except ValueError:
                raise JudgeError(f"the judge at {self.url} sent {_excerpt(response.text)}, which is not JSON") from None
        raise AssertionError("unreachable")

    def ask(self, instruction: str, first: str, second: str) -> Verdict:
        """Which of two answers is better; the first is shown as the first label."""
        started = time.perf_counter()
        payload = {"model": self.model, "messages": self.protocol.messages(instruction, first, second),
                   "temperature": 0.0}
        labels = list(self.protocol.labels)
        if self.constraint == "choice":
            payload.update(max_tokens=8, logprobs=True, top_logprobs=2, structured_outputs={"choice": labels})
        elif self.constraint == "logprobs":
            payload.update(max_tokens=1, logprobs=True, top_logprobs=20)
        else:
            payload.update(max_tokens=8)
        body = self._request("POST", "/v1/chat/completions", payload)
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge at {self.url} sent {_excerpt(json.dumps(body))}, not a chat completion") from None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        tokens = int(usage.get("total_tokens") or 0)
        first_token = _first_logprobs(choice)
        probability = _label_probability(first_token, labels)
        if self.constraint == "logprobs":
            if probability is None:
                winner = None
            else:
                winner = 0 if probability >= 0.5 else 1
        else:
            read = text.strip().strip("\"'`*.").strip()
            winner = labels.index(read) if read in labels else None
        if winner is None:
            reply = text if text.strip() else "(an empty reply)"
        else:
            reply = labels[winner] + (f" (p={probability:.3f})" if probability is not None else "")
        return Verdict(winner, reply, tokens, time.perf_counter() - started)

    def close(self) -> None:
        self.http.close()


def _base_url(url: str) -> str:
    if not url or not url.startswith(("http://", "https://")):
        raise CLOError(f"the judge URL must start with http:// or https://, got {url!r}")
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:160]


def _excerpt(text: str, limit: int = 100) -> str:
    folded = " ".join(str(text).split())
    return "an empty body" if not folded else repr(folded[:limit] + ("…" if len(folded) > limit else ""))


def _server_message(response: httpx.Response) -> str:
    """The message of an OpenAI-style error body, else an excerpt of what was sent."""
    try:
        body = response.json()
    except ValueError:
        return _excerpt(response.text)
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else error
    return _excerpt(str(message if message else body))


def _first_logprobs(choice: dict) -> list[dict]:
    try:
        content = choice["logprobs"]["content"]
        return content[0].get("top_logprobs") or [] if content else []
    except (KeyError, TypeError, IndexError, AttributeError):
        return []


def _label_probability(top: list[dict], labels: list[str]) -> float | None:
    """P(first label) among the two labels, from the first token's top log-probabilities (a token counts as a
    label when it is one after stripping spaces); None when neither label is among them."""
    best = {}
    for entry in top:
        token = str(entry.get("token", "")).strip()
        logprob = entry.get("logprob")
        if token in labels and isinstance(logprob, (int, float)) and logprob > -1e3:
            best[token] = max(best.get(token, -math.inf), float(logprob))
    if not best:
        return None
    first, second = best.get(labels[0], -math.inf), best.get(labels[1], -math.inf)
    top_logprob = max(first, second)
    return math.exp(first - top_logprob) / (math.exp(first - top_logprob) + math.exp(second - top_logprob))


# ---- judging many pairs ----

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
    items (`clo.evaluate.ratings.win_rate_interval`) and the length-controlled rate (`length_controlled_win_rate`)."""
    from clo.evaluate.ratings import length_controlled_win_rate, win_rate_interval, winner_labels

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


# ---- prompts: the sample, a file, or a hub prompt set ----

# hub prompt sets read from one file in the dataset repo (AlpacaEval's 805 instructions: English only)
HUB_PROMPT_SETS = {"tatsu-lab/alpaca_eval": ("alpaca_eval.json", "instruction")}


@dataclass
class PromptPair:
    id: str
    target: str | None  # the prompt in the target language
    english: str | None  # its English version


def load_prompt_pairs(source: str, lang: str, limit: int | None = None, translator: str = "m2m100",
                      translator_model: str | None = None, cache_dir: str = "cache") -> list[PromptPair]:
    """Prompts in `lang` and their English versions from "sample" (assets/sample), "held-out" (the sample's rows that
    no shipped adapter or `python -m clo replicate` trains on: every fifth), a JSONL file (fields prompt_en or
    instruction for English, prompt_<lang> or prompt for the target language) or a hub prompt set; the first `limit`.
    Rows with only English are translated by the project's translator (clo.train.data, cached)."""
    from clo.train.data import SAMPLE, read_records

    if limit is not None and limit < 1:
        raise CLOError(f"--limit must be ≥ 1, got {limit}")
    if source == "held-out":
        from clo.experiments.replicate import HELD_OUT_EVERY

        records = [r for k, r in enumerate(read_records(SAMPLE)) if k % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    elif source == "sample" or Path(source).exists() or source.endswith((".jsonl", ".json")) or "/" not in source:
        path = SAMPLE if source == "sample" else Path(source)
        if not path.is_file():
            raise CLOError(f"prompt file {path} does not exist")
        records = list(read_records(path))
    else:
        records = _hub_records(source)
    pairs = []
    for where, record in records[:limit] if limit else records:
        english = _field(record, ("prompt_en", "instruction"), where)
        target = english if lang == "en" else _field(record, (f"prompt_{lang}", "prompt"), where)
        if english is None and target is None:
            raise CLOError(f"{where}: no prompt: give 'prompt_en' (or 'instruction') and/or 'prompt_{lang}'")
        pairs.append(PromptPair(str(record.get("id", where)), target, english))
    if not pairs:
        raise CLOError(f"no prompts in {source}: nothing to judge")
    missing = [p for p in pairs if p.target is None]
    if missing:
        from clo.train.data import HFTranslator, TranslationCache, translate_cached

        engine = HFTranslator(translator, translator_model)
        done = translate_cached(engine, [p.english for p in missing], "en", lang, TranslationCache(Path(cache_dir) / "translations.sqlite"))
        for p, text in zip(missing, done):
            if not text.strip():
                raise CLOError(f"the translator {engine.model_id} gave an empty {lang} translation of prompt {p.id} "
                               f"({_excerpt(p.english, 60)}); give that row a 'prompt_{lang}'")
            p.target = text
    return pairs


def _field(record: dict, keys: tuple[str, ...], where: str) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CLOError(f"{where}: '{key}' must be text, got {type(value).__name__}")
        if value.strip():
            return value
    return None


def _hub_records(source: str) -> list[tuple[str, dict]]:
    """A hub prompt set's rows, through clo.hub: offline and not cached, the project's one-sentence hub message."""
    from clo.hub import explain_missing, locate

    where = locate(source, kind="dataset", flag="--prompts")
    with explain_missing(where):
        if source in HUB_PROMPT_SETS:
            from huggingface_hub import hf_hub_download

            filename, field_name = HUB_PROMPT_SETS[source]
            path = hf_hub_download(source, filename, repo_type="dataset", local_files_only=where.local_files_only)
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
            return [(f"{source} row {i}", {"id": str(i), "prompt_en": row[field_name]}) for i, row in enumerate(rows)]
        import datasets

        offline = datasets.config.HF_HUB_OFFLINE
        try:
            datasets.config.HF_HUB_OFFLINE = offline or where.local_files_only
            ds = datasets.load_dataset(where.name, split="train")
        finally:
            datasets.config.HF_HUB_OFFLINE = offline
    return [(f"{source} row {i}", dict(row)) for i, row in enumerate(ds)]


# ---- command line ----

def _lang(text: str) -> str:
    from clo.languages import lang_code

    try:
        return lang_code(text)
    except CLOError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """`python -m clo judge`: the parser, added to the command line's subparsers."""
    p = subparsers.add_parser(
        "judge", help="an LLM judge (AlpacaEval's pairwise protocol): win rate of one variant against another",
        description="Answer the prompts with both variants (target language and English), ask an OpenAI-compatible "
        "judge which answer of each pair is better, store its verdicts as judge votes, and print the first variant's "
        f"win rate with a 95% bootstrap interval and the length-controlled win rate. API key: ${API_KEY_VARIABLE}.")
    p.add_argument("--adapters", required=True, metavar="FIRST,SECOND",
                   help="the two variants, e.g. clo-ko,sft-ko (an adapter under --adapters-dir, or base)")
    p.add_argument("--lang", required=True, type=_lang, help="the target language of the prompts")
    p.add_argument("--prompts", default="sample", metavar="sample|held-out|FILE|HUB_ID",
                   help="the shipped sample, its held-out fifth (never trained on), a JSONL file, or a hub prompt set "
                        "such as tatsu-lab/alpaca_eval")
    p.add_argument("--judge-url", default=os.environ.get("CLO_JUDGE_URL"), help="the judge's OpenAI-compatible server "
                   "(default $CLO_JUDGE_URL), e.g. http://127.0.0.1:8001")
    p.add_argument("--judge-model", default=os.environ.get("CLO_JUDGE_MODEL"),
                   help="the judge's model name at that server (default $CLO_JUDGE_MODEL)")
    p.add_argument("--judge-constraint", default="auto", choices=CONSTRAINTS,
                   help="how every reply is made readable: auto (choice on vLLM, else logprobs)")
    p.add_argument("--judge-timeout", type=float, default=120.0, help="seconds to wait for one verdict")
    p.add_argument("--concurrency", type=int, default=16, help="judgments in flight at once")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--db", default="votes.db", help="vote store: a file path or sqlite:///... / postgresql://...")
    p.add_argument("--seed", type=int, default=0, help="draws which answer is shown first, per pair")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="base model: hub id or local folder")
    p.add_argument("--adapters-dir", default="adapters")
    p.add_argument("--engine", default="auto", choices=("auto", "vllm", "remote", "peft"))
    p.add_argument("--url", help="the vLLM server for --engine remote")
    p.add_argument("--max-tokens", type=int, default=512, help="new tokens per answer")
    p.add_argument("--translator", default="m2m100", choices=("m2m100", "nllb"),
                   help="translates prompts given only in English (a hub set) into --lang")
    p.add_argument("--translator-model", help="the translation model (default: the translator's usual one)")
    p.add_argument("--cache-dir", default="cache", help="where translations are cached")
    p.set_defaults(func=cmd_judge)
    return p


def answer_pairs(engine, prompts: list[PromptPair], lang: str, variants: list[str], sampling) -> tuple[list[Item], int]:
    """Both variants' answers to every prompt in `lang` and to its English version, as items to judge; and how many
    prompts were left out because a generation failed. The engine is closed afterwards."""
    from clo.engines import Request

    try:
        served = engine.variants()
        for v in variants:
            if v not in served:
                raise CLOError(f"unknown adapter {v!r}: the engine serves {', '.join(served)}")
        sets = [(lang, [p.target for p in prompts])]
        if lang != "en":
            sets.append(("en", [p.english for p in prompts if p.english]))
        items, failed = [], 0
        for language, texts in sets:
            print(f"[clo] answering {len(texts)} {language} prompts with {variants[0]} and {variants[1]}", flush=True)
            answers = engine.generate([Request(v, [{"role": "user", "content": t}], sampling) for t in texts for v in variants])
            for k, text in enumerate(texts):
                pair = answers[2 * k: 2 * k + 2]
                if any(a.error for a in pair):
                    failed += 1
                    continue
                items.append(Item(language, text, {a.variant: a.text for a in pair},
                                  {v: served[v] for v in variants}, engine.kind))
        return items, failed
    finally:
        engine.close()


def cmd_judge(args: argparse.Namespace) -> None:
    from clo.engines import BASE, Sampling, load_engine
    from clo.evaluate.store import open_store

    variants = [v.strip() for v in args.adapters.split(",") if v.strip()]
    if len(variants) != 2 or variants[0] == variants[1]:
        raise CLOError(f"--adapters takes two different variants, FIRST,SECOND (e.g. clo-ko,sft-ko), got {args.adapters!r}")
    if not args.judge_url:
        raise CLOError("give the judge's server with --judge-url URL (or set CLO_JUDGE_URL)")
    if not args.judge_model:
        raise CLOError("give the judge's model with --judge-model NAME (or set CLO_JUDGE_MODEL)")
    # cheap checks first: the judge answers and the prompts read, before minutes of generation
    client = JudgeClient(args.judge_url, args.judge_model, api_key=os.environ.get(API_KEY_VARIABLE) or None,
                         constraint=args.judge_constraint, timeout=args.judge_timeout, concurrency=args.concurrency)
    try:
        prompts = load_prompt_pairs(args.prompts, args.lang, args.limit, args.translator, args.translator_model,
                                    args.cache_dir)
        store = open_store(args.db)
        adapters = [v for v in variants if v != BASE]
        engine = load_engine(args.engine, model=args.model, adapters_dir=args.adapters_dir, adapters=adapters or None,
                             url=args.url)
        items, failed = answer_pairs(engine, prompts, args.lang, variants, Sampling(max_tokens=args.max_tokens))
        print(f"[clo] judging {len(items)} pairs with {client.model} at {client.url} ({client.constraint}, "
              f"{client.concurrency} in flight)", flush=True)
        step = max(1, len(items) // 10)

        def progress(k: int, n: int) -> None:
            if k % step == 0 or k == n:
                print(f"[clo] judged {k}/{n}", flush=True)

        run = judge_items(items, client, store, seed=args.seed, progress=progress)
        results = judge_results(store.votes(), items, client.model, client.protocol.name, variants[0], variants[1],
                                args.bootstrap, args.seed)
    finally:
        client.close()
    print(f"\n{variants[0]} vs {variants[1]}, judged by {client.model} ({client.protocol.name}); ties count half")
    for language, r in results.items():
        if not r["n"]:
            print(f"  {language}: no verdicts")
            continue
        print(f"  {language}: win rate {100 * r['rate']:.1f}% [95% CI {100 * r['lower']:.1f}, {100 * r['upper']:.1f}] "
              f"(n = {r['n']}: {r['wins']} W / {r['ties']} T / {r['losses']} L); "
              f"length-controlled {100 * r['length_controlled']:.1f}%; named the answer shown first in "
              f"{100 * r['first_shown']:.0f}% of its decided verdicts (position bias: 50% is none)")
    notes = [f"{run.judged} judged now", f"{run.skipped} already judged (skipped)",
             f"{run.identical} identical pairs (ties, judge not asked)", f"{len(run.unreadable)} unreadable replies"]
    if failed:
        notes.append(f"{failed} prompts whose generation failed")
    tokens = f"; {run.tokens / run.judged:.0f} judge tokens per verdict" if run.judged and run.tokens else ""
    print(f"  {', '.join(notes)}{tokens}")
    if run.unreadable:
        print(f"  unreadable (kept apart, never counted; a rerun asks again), e.g. {_excerpt(run.unreadable[0])}; "
              "a judge that answers in plain text may need --judge-constraint none")
