"""Arena tab: blind two-way battles. Two anonymous answers, four buttons, identities revealed after the vote.

Two identical answers are never shown (another pair is drawn); Skip records nothing and draws a new battle. An empty
(or blank) prompt draws an example; one with characters but nothing printable (controls, NULs, zero-width
characters) is refused as Compare refuses an empty one (Services.check_prompt), and no battle is stored.

API: `/battle` (prompt or "", language) -> {battle_id, language, prompt, english, answer_a, answer_b}: nothing that
     names a variant (english: the prompt's English original when it is an example, else None);
     `/vote` (battle_id, outcome) -> the reveal {variant_a, variant_b, outcome}. A battle can be voted on once,
     and only by the session that drew it, from the same address. Both endpoints are rate-limited per voter
     and per address (the message says when to retry).

The flow (drawing, generating, refusing identical answers, storing, voting, skipping) and its server-side checks
are clo.evaluate.arena; this module holds the widgets and the handlers that call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from clo import CLOError
from clo.app.context import Services
from clo.evaluate import arena as flow
from clo.app.ui.refusal import refusal

BUTTONS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


def english_line(english: str | None) -> str:
    return f"<sub>In English: {english}</sub>" if english else ""



@dataclass(frozen=True)
class ArenaTab:
    """What build_app wires from the Arena tab."""

    prompt: object  # the prompt box (Compare's Send to Arena fills it)
    lang: object  # the language dropdown

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

    def voting(on: bool) -> dict:
        return {button: gr.update(interactive=on) for button in buttons.values()}

    def on_draw(bid, code, request: gr.Request):
        """A new prompt clears the last battle from the screen (an unvoted one is dropped, as Skip drops it)."""
        flow.skip(services, request, bid)
        text, en = flow.draw_prompt(services, code)
        return {battle_id: None, prompt: text, english: english_line(en), answer_a: "", answer_b: "", reveal: "",
                **voting(False)}

    def on_typed(p, code):
        return english_line(services.english_of((p or "").strip(), code))

    def on_start(p, code, request: gr.Request):
        """The answers as they arrive (the buttons stay off until the battle is stored), then the battle."""
        try:
            for b in flow.stream_battle(services, request, p, code):
                yield {battle_id: b.get("battle_id"), prompt: b["prompt"], english: english_line(b["english"]),
                       answer_a: b["answer_a"] or "*…*", answer_b: b["answer_b"] or "*…*", reveal: "",
                       **voting("battle_id" in b)}
        except CLOError as e:  # one message; the panes keep what they showed (no error badge on each)
            gr.Warning(str(e))
            yield gr.skip()

    def on_skip(bid, code, request: gr.Request):
        flow.skip(services, request, bid)
        yield from on_start("", code, request)

    def on_vote(outcome: str):
        def handler(bid, request: gr.Request):
            try:
                if not bid:
                    raise CLOError("start a battle first")
                r = flow.cast_vote(services, request, bid, outcome)
            except CLOError as e:
                gr.Warning(str(e))
                return gr.skip()
            text = (f"**A** was `{r['variant_a']}`, **B** was `{r['variant_b']}` — you chose *{BUTTONS[outcome]}*. "
                    "Start a new battle for the next round.")
            return {battle_id: None, reveal: text, **voting(False)}
        return handler

    battle_outputs = [battle_id, prompt, english, answer_a, answer_b, reveal, *buttons.values()]
    draw.click(on_draw, [battle_id, lang], battle_outputs, api_visibility="private")
    prompt.blur(on_typed, [prompt, lang], english, api_visibility="private", show_progress="hidden")
    generation = services.generation
    # while the answers stream, only the answer panes show progress: the prompt stays readable
    panes = [answer_a, answer_b]
    start.click(on_start, [prompt, lang], battle_outputs, api_visibility="private", show_progress_on=panes, **generation)
    skip.click(on_skip, [battle_id, lang], battle_outputs, api_visibility="private", show_progress_on=panes, **generation)
    for outcome, button in buttons.items():
        button.click(on_vote(outcome), battle_id, [battle_id, reveal, *buttons.values()], api_visibility="private")

    def battle(prompt: str, language: str, request: gr.Request) -> dict:
        """A new blind battle: two anonymous answers to `prompt` (or to a drawn example when it is empty)."""
        try:
            return flow.start_battle(services, request, prompt, language)
        except CLOError as e:
            raise refusal(e) from None

    def vote(battle_id: str, outcome: str, request: gr.Request) -> dict:
        """Vote once on a battle ("a", "b", "tie" or "both_bad"); returns which variant was which."""
        try:
            return flow.cast_vote(services, request, battle_id, outcome)
        except CLOError as e:
            raise refusal(e) from None

    gr.api(battle, api_name="battle", **generation)
    gr.api(vote, api_name="vote")
    return ArenaTab(prompt=prompt, lang=lang)
