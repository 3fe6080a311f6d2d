"""Arena tab: blind two-way battles. Two anonymous answers, four buttons, identities revealed after the vote.

API: `/battle` (prompt or "", language) -> {battle_id, prompt, answer_a, answer_b}: nothing that names a variant;
     `/vote` (battle_id, outcome) -> the reveal {variant_a, variant_b, outcome}. A battle can be voted on once,
     and only by the session that drew it.
"""

from __future__ import annotations

import random

import gradio as gr

from clo import CLOError
from clo.languages import LANGUAGES
from clo.ui.services import Services
from clo.votes import OUTCOMES

BUTTONS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


def voter_of(request: gr.Request | None) -> str:
    """The session (a browser tab or a gradio_client) as the voter; the store keeps only its hash."""
    return getattr(request, "session_hash", None) or "anonymous"


def new_battle(services: Services, prompt: str | None, lang: str, voter: str) -> dict:
    lang = services.check_lang(lang)
    if not (prompt or "").strip():
        pool = services.examples.get(lang)
        if not pool:
            raise CLOError(f"no example prompts in {lang!r}: type a prompt")
        prompt = random.choice(pool)[0]
    prompt = services.check_prompt(prompt)
    variants = services.battle_variants(lang)
    if len(variants) < 2:
        raise CLOError(f"a battle needs two variants for {lang!r}; train an SFT or CLO adapter first")
    pair = services.store.draw_pair(variants, lang)
    answers = services.generate(services.requests(prompt, list(pair)))
    hashes = services.engine.variants()
    battle = services.store.create_battle(voter=voter, language=lang, prompt=prompt,
                                          answers={a.variant: a.text for a in answers},
                                          hashes={v: hashes.get(v) for v in pair}, engine=services.engine.kind)
    return {"battle_id": battle.id, "language": lang, "prompt": prompt, "answer_a": battle.answer_a, "answer_b": battle.answer_b}


def cast_vote(services: Services, battle_id: str, outcome: str, voter: str) -> dict:
    return services.store.vote(battle_id, outcome, voter=voter)


def build(services: Services, default_lang: str = "ko"):
    battle_id = gr.State(None)
    langs = [(f"{LANGUAGES[c].name} ({c})", c) for c in services.examples] or [("Korean (ko)", "ko")]
    with gr.Row():
        lang = gr.Dropdown(langs, value=default_lang, label="Language", scale=1)
        prompt = gr.Textbox(label="Your prompt (or leave empty and draw one)", lines=2, scale=4,
                            max_length=services.settings.max_prompt_chars)
    with gr.Row():
        start = gr.Button("Start battle", variant="primary")
        draw = gr.Button("Draw a prompt")
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
        return random.choice(pool)[0]

    def on_start(p, code, request: gr.Request):
        try:
            b = new_battle(services, p, code, voter_of(request))
        except CLOError as e:
            raise gr.Error(str(e)) from None
        return [b["battle_id"], b["prompt"], b["answer_a"], b["answer_b"], ""] + [gr.update(interactive=True)] * len(BUTTONS)

    def on_vote(outcome: str):
        def handler(bid, request: gr.Request):
            if not bid:
                raise gr.Error("start a battle first")
            try:
                r = cast_vote(services, bid, outcome, voter_of(request))
            except CLOError as e:
                raise gr.Error(str(e)) from None
            text = (f"**A** was `{r['variant_a']}`, **B** was `{r['variant_b']}` — you chose *{BUTTONS[outcome]}*. "
                    "Start a new battle for the next round.")
            return [None, text] + [gr.update(interactive=False)] * len(BUTTONS)
        return handler

    draw.click(on_draw, lang, prompt, api_visibility="private")
    start.click(on_start, [prompt, lang], [battle_id, prompt, answer_a, answer_b, reveal, *buttons.values()],
                api_visibility="private")
    for outcome, button in buttons.items():
        button.click(on_vote(outcome), battle_id, [battle_id, reveal, *buttons.values()], api_visibility="private")

    def battle(prompt: str, language: str, request: gr.Request) -> dict:
        """A new blind battle: two anonymous answers to `prompt` (or to a drawn example when it is empty)."""
        try:
            return new_battle(services, prompt, language, voter_of(request))
        except CLOError as e:
            raise gr.Error(str(e)) from None

    def vote(battle_id: str, outcome: str, request: gr.Request) -> dict:
        """Vote once on a battle ("a", "b", "tie" or "both_bad"); returns which variant was which."""
        if outcome not in OUTCOMES:
            raise gr.Error(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
        try:
            return cast_vote(services, battle_id, outcome, voter_of(request))
        except CLOError as e:
            raise gr.Error(str(e)) from None

    gr.api(battle, api_name="battle")
    gr.api(vote, api_name="vote")
    return prompt, lang
