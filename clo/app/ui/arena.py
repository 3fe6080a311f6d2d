"""Arena tab: blind two-way battles. Two anonymous answers, four buttons, identities revealed after the vote.

Two identical answers are never shown (another pair is drawn); Skip records nothing and draws a new battle. An empty
(or blank) prompt draws an example; one with characters but nothing printable (controls, NULs, zero-width
characters) is refused as Compare refuses an empty one (Services.check_prompt), and no battle is stored.

API: `/battle` (prompt or "", language) -> {battle_id, language, prompt, english, answer_a, answer_b}: nothing that
     names a variant (english: the prompt's English original when it is an example, else None);
     `/vote` (battle_id, outcome) -> the reveal {variant_a, variant_b, outcome}. A battle can be voted on once,
     and only by the session that drew it, from the same address. Both endpoints are rate-limited per voter
     and per address (the message says when to retry).
"""

from __future__ import annotations

import random

import gradio as gr

from clo import CLOError
from clo.app.context import Services
from clo.evaluate.store import OUTCOMES

DRAWS = 8  # prompts tried for a drawn battle before saying every variant answers alike (a small model's short
#           tasks often get one right answer from every variant)
BUTTONS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


def same_answer(a: str, b: str) -> bool:
    """Two answers a visitor could not tell apart (equal up to spacing)."""
    return " ".join(a.split()) == " ".join(b.split())


def new_battle(services: Services, prompt: str | None, lang: str, voter: str, address: str | None = None) -> dict:
    """A blind battle between two variants whose answers differ. Identical answers cannot be judged, so another
    pair is drawn (and, for a drawn prompt, another prompt); when every variant answers alike, a message says so."""
    lang = services.check_lang(lang)
    drawn = not (prompt or "").strip()
    pool = services.examples.get(lang) or []
    if drawn and not pool:
        raise CLOError(f"no example prompts in {lang!r}: type a prompt")
    variants = services.battle_variants(lang)
    if len(variants) < 2:
        raise CLOError(f"a battle needs two variants for {lang!r}; train an SFT or CLO adapter first")
    n_pairs = len(variants) * (len(variants) - 1) // 2
    for _ in range(DRAWS if drawn else 1):
        text = services.check_prompt(random.choice(pool)[0] if drawn else prompt)
        answers: dict[str, str] = {}
        tried: set[frozenset] = set()
        while len(tried) < n_pairs:
            pair = services.store.draw_pair(variants, lang, exclude=tried)
            missing = [v for v in pair if v not in answers]
            if missing:
                for a in services.generate(services.requests(text, missing, owner=address)):
                    if a.error:  # half an answer is not judged: no battle is stored
                        raise CLOError(f"the model server failed, so there is no battle to judge: {a.error}")
                    answers[a.variant] = a.text
            if not same_answer(answers[pair[0]], answers[pair[1]]):
                hashes = services.engine.variants()
                battle = services.store.create_battle(voter=voter, language=lang, prompt=text,
                                                      answers={v: answers[v] for v in pair},
                                                      hashes={v: hashes.get(v) for v in pair}, engine=services.engine.kind,
                                                      detected={v: services.detect(answers[v]).code for v in pair},
                                                      address=address)
                return {"battle_id": battle.id, "language": lang, "prompt": text, "english": services.english_of(text, lang),
                        "answer_a": battle.answer_a, "answer_b": battle.answer_b}
            tried.add(frozenset(pair))
    raise CLOError("every variant gave the same answer to this prompt, so there is nothing to judge: try another prompt")


def cast_vote(services: Services, battle_id: str, outcome: str, voter: str, address: str | None = None) -> dict:
    reveal = services.store.vote(battle_id, outcome, voter=voter, address=address)
    services.judging.poke()  # a background judge, when there is one, judges the new battle in its own thread
    return reveal


def english_line(english: str | None) -> str:
    return f"<sub>In English: {english}</sub>" if english else ""


def build(services: Services, default_lang: str = "ko"):
    battle_id = gr.State(None)
    with gr.Row():
        lang = gr.Dropdown(services.language_choices(), value=default_lang, label="Language", scale=1)
        with gr.Column(scale=4):
            prompt = gr.Textbox(label="Your prompt (or leave empty and draw one)", lines=2,
                                max_length=services.settings.max_prompt_chars)
            english = gr.Markdown(elem_id="arena-english")
    with gr.Row():
        start = gr.Button("Start battle", variant="primary")
        draw = gr.Button("Draw a prompt")
        skip = gr.Button("Skip: record nothing, next battle", elem_id="skip")
    with gr.Row(equal_height=True):
        with gr.Column():
            gr.Markdown("**A**")
            answer_a = gr.Markdown(elem_id="answer-a", elem_classes=["answer"])
        with gr.Column():
            gr.Markdown("**B**")
            answer_b = gr.Markdown(elem_id="answer-b", elem_classes=["answer"])
    with gr.Row():
        buttons = {o: gr.Button(label, interactive=False, elem_id=f"vote-{o}") for o, label in BUTTONS.items()}
    reveal = gr.Markdown(elem_id="reveal")

    def on_draw(code):
        pool = services.examples.get(code) or [("", "")]
        text, en = random.choice(pool)
        return text, english_line(en)

    def on_typed(p, code):
        return english_line(services.english_of((p or "").strip(), code))

    def on_start(p, code, request: gr.Request):
        try:
            with services.in_flight(request):
                b = new_battle(services, p, code, *services.voter(request))
        except CLOError as e:  # one message; the panes keep what they showed (no error badge on each)
            gr.Warning(str(e))
            return [gr.skip()] * (6 + len(BUTTONS))
        return [b["battle_id"], b["prompt"], english_line(b["english"]), b["answer_a"], b["answer_b"], ""] + \
            [gr.update(interactive=True)] * len(BUTTONS)

    def on_skip(bid, code, request: gr.Request):
        if bid:
            services.store.discard(bid, *services.voter(request))
        return on_start("", code, request)

    def on_vote(outcome: str):
        def handler(bid, request: gr.Request):
            try:
                if not bid:
                    raise CLOError("start a battle first")
                r = cast_vote(services, bid, outcome, *services.voter(request))
            except CLOError as e:
                gr.Warning(str(e))
                return [gr.skip()] * (2 + len(BUTTONS))
            text = (f"**A** was `{r['variant_a']}`, **B** was `{r['variant_b']}` — you chose *{BUTTONS[outcome]}*. "
                    "Start a new battle for the next round.")
            return [None, text] + [gr.update(interactive=False)] * len(BUTTONS)
        return handler

    battle_outputs = [battle_id, prompt, english, answer_a, answer_b, reveal, *buttons.values()]
    draw.click(on_draw, lang, [prompt, english], api_visibility="private")
    prompt.blur(on_typed, [prompt, lang], english, api_visibility="private", show_progress="hidden")
    generation = services.generation
    start.click(on_start, [prompt, lang], battle_outputs, api_visibility="private", **generation)
    skip.click(on_skip, [battle_id, lang], battle_outputs, api_visibility="private", **generation)
    for outcome, button in buttons.items():
        button.click(on_vote(outcome), battle_id, [battle_id, reveal, *buttons.values()], api_visibility="private")

    def battle(prompt: str, language: str, request: gr.Request) -> dict:
        """A new blind battle: two anonymous answers to `prompt` (or to a drawn example when it is empty)."""
        try:
            with services.in_flight(request):
                return new_battle(services, prompt, language, *services.voter(request))
        except CLOError as e:
            raise gr.Error(str(e)) from None

    def vote(battle_id: str, outcome: str, request: gr.Request) -> dict:
        """Vote once on a battle ("a", "b", "tie" or "both_bad"); returns which variant was which."""
        if outcome not in OUTCOMES:
            raise gr.Error(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
        try:
            return cast_vote(services, battle_id, outcome, *services.voter(request))
        except CLOError as e:
            raise gr.Error(str(e)) from None

    gr.api(battle, api_name="battle", **generation)
    gr.api(vote, api_name="vote")
    return prompt, lang
