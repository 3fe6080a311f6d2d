"""The Arena's battle flow, without widgets: draw a prompt, draw a pair of variants, generate both answers (an
identical pair is never shown: another pair, and for a drawn prompt another prompt, is drawn), store the blind
battle, record one vote on it and reveal who was who, or skip it. The answers can be streamed to the page as they
arrive (`stream_battle`); the battle is stored, and can be voted on, only once both are whole. The Arena tab
(clo.app.ui.arena) and its `/battle` and `/vote` endpoints call these functions and nothing more.

Each function takes the app's services (clo.app.context.Services: the engine, the line-up, the vote store, the
admission limits) and the caller's request, and checks on the server, under every caller (the page, gradio_client,
raw HTTP): a battle is generated only once its caller is admitted (`Services.in_flight`: per session and per address),
and the store takes a vote only from the session that drew the battle, from the same address, once, within the
rate limits (clo.evaluate.battles.vote, bound as VoteStore.vote).

    b = start_battle(services, request, "", "ko")           # {battle_id, language, prompt, english, answer_a, answer_b}
    for shown in stream_battle(services, request, "", "ko"): ...   # the answers as they arrive; the last has battle_id
    cast_vote(services, request, b["battle_id"], "a")      # {battle_id, variant_a, variant_b, outcome}
    skip(services, request, b["battle_id"])                # records nothing; the battle can no longer be voted on
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Iterator

from clo import CLOError
from clo.evaluate.battles import OUTCOMES
from clo.evaluate.leaks import leak
from clo.evaluate.ratings import base_key

if TYPE_CHECKING:  # the app's services are passed in: evaluate does not import the app
    from clo.app.context import Services

DRAWS = 8  # prompts tried for a drawn battle before saying every variant answers alike (a small model's short
#           tasks often get one right answer from every variant)


def same_answer(a: str, b: str) -> bool:
    """Two answers a visitor could not tell apart (equal up to spacing)."""
    return " ".join(a.split()) == " ".join(b.split())


def draw_prompt(services: Services, lang: str) -> tuple[str, str]:
    """An example prompt in `lang` and its English original, at random; ("", "") when `lang` has none."""
    return random.choice(services.examples.get(lang) or [("", "")])


def battle_stream(services: Services, prompt: str | None, lang: str, voter: str, address: str | None = None
                  ) -> Iterator[dict]:
    """A blind battle between two variants whose answers differ, streamed: yields {language, prompt, english,
    answer_a, answer_b} as the answers arrive (no battle_id: nothing can be voted on yet, and nothing names a
    variant), then the battle stored for session `voter` from `address`, with its battle_id. An empty (or blank)
    `prompt` draws an example. Identical answers cannot be judged, so another pair is drawn (and, for a drawn prompt,
    another prompt), and the panes start again; when every variant answers alike, a message says so. A failed answer
    stores nothing. Admission is the caller's: `stream_battle` admits, then iterates this."""
    lang = services.check_lang(lang)
    drawn = not (prompt or "").strip()
    pool = services.examples.get(lang) or []
    if drawn and not pool:
        raise CLOError(f"no example prompts in {lang!r}: type a prompt")
    variants = services.battle_variants(lang)
    if len(variants) < 2:
        raise CLOError(f"a battle needs two variants for {lang!r}; train an SFT or CLO adapter first")
    n_pairs = len(variants) * (len(variants) - 1) // 2
    base = services.engine.base_identity()  # the base model behind every answer, recorded with the vote
    for _ in range(DRAWS if drawn else 1):
        text = services.check_prompt(random.choice(pool)[0] if drawn else prompt)
        shown = {"language": lang, "prompt": text, "english": services.english_of(text, lang)}
        answers: dict[str, str] = {}
        tried: set[frozenset] = set()
        while len(tried) < n_pairs:
            left, right = services.store.place(
                services.store.draw_pair(variants, lang, exclude=tried, base=base_key(*base)))
            missing = [v for v in (left, right) if v not in answers]
            so_far = dict(answers)
            yield shown | {"answer_a": so_far.get(left, ""), "answer_b": so_far.get(right, "")}
            if missing:
                final = None
                for final in services.stream(services.requests(text, missing, owner=address)):
                    so_far.update((a.variant, a.text) for a in final)
                    yield shown | {"answer_a": so_far[left], "answer_b": so_far[right]}
                for a in final:
                    if a.error:  # half an answer is not judged: no battle is stored
                        raise CLOError(f"the model server failed, so there is no battle to judge: {a.error}")
                    answers[a.variant] = a.text
            if not same_answer(answers[left], answers[right]):
                hashes = services.engine.variants()
                battle = services.store.create_battle(voter=voter, language=lang, prompt=text,
                                                      answers={v: answers[v] for v in (left, right)},
                                                      hashes={v: hashes.get(v) for v in (left, right)},
                                                      sources=services.engine.sources(),
                                                      engine=services.engine.kind, placed=(left, right),
                                                      detected={v: services.detect(answers[v], lang, prompt=text).code
                                                                for v in (left, right)},
                                                      address=address, base=base,
                                                      leak=leak(text, [answers[left], answers[right]],
                                                                services.engine.variants(), base[0]))
                yield shown | {"battle_id": battle.id, "answer_a": battle.answer_a, "answer_b": battle.answer_b}
                return
            tried.add(frozenset((left, right)))
    raise CLOError("every variant gave the same answer to this prompt, so there is nothing to judge: try another prompt")


def new_battle(services: Services, prompt: str | None, lang: str, voter: str, address: str | None = None) -> dict:
    """`battle_stream`'s stored battle, without the answers on the way: {battle_id, language, prompt, english,
    answer_a, answer_b}."""
    for shown in battle_stream(services, prompt, lang, voter, address):
        pass
    return {k: shown[k] for k in ("battle_id", "language", "prompt", "english", "answer_a", "answer_b")}


def stream_battle(services: Services, request, prompt: str | None, lang: str) -> Iterator[dict]:
    """`battle_stream` for the caller of `request` (a gr.Request): refused with one sentence unless its session and
    address are admitted (Services.in_flight), and counted against their limits while it generates. Closing the
    generator (the visitor left) stops its answers at the engine's next step and stores nothing."""
    with services.in_flight(request):
        yield from battle_stream(services, prompt, lang, *services.voter(request))


def start_battle(services: Services, request, prompt: str | None, lang: str) -> dict:
    """`new_battle` for the caller of `request`, admitted as `stream_battle` admits it (the `/battle` endpoint)."""
    with services.in_flight(request):
        return new_battle(services, prompt, lang, *services.voter(request))


def cast_vote(services: Services, request, battle_id: str, outcome: str) -> dict:
    """Record the caller's vote on its battle (`outcome`: a / b / tie / both_bad, clo.evaluate.battles.OUTCOMES) and
    return the reveal {battle_id, variant_a, variant_b, outcome}. The store refuses another session's battle, a
    second vote, an expired battle and a voter or address over its rate, each with one sentence."""
    if outcome not in OUTCOMES:
        raise CLOError(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
    reveal = services.store.vote(battle_id, outcome, *services.voter(request))
    services.judging.poke()  # a background judge, when there is one, judges the new battle in its own thread
    if services.votes_mirror is not None:  # the votes mirror appends it in its own thread (clo.evaluate.hub_sync)
        services.votes_mirror.poke(reveal["battle_id"])
    return reveal


def skip(services: Services, request, battle_id: str | None) -> None:
    """Drop the caller's unvoted battle: it records nothing and can no longer be voted on (another session's
    battle, or one with a vote, is left as it is)."""
    if battle_id:
        services.store.discard(battle_id, *services.voter(request))
