"""Compare tab: the base, SFT and CLO answers side by side, streamed, in the target language and in English.

A line above the answers says what each slot serves (the adapter, its version, who chose it: clo.app.lineup).

API: `/compare` (prompt, language[, english]) -> {"target": [...], "english": [...]}, one labelled answer per variant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from clo import CLOError
from clo.engines import Answer
from clo.evaluate import langid
from clo.evaluate.langid import Detection
from clo.app.context import Services
from clo.app.ui.refusal import refusal

SLOTS = ("base", "sft", "clo")
SLOW_S = 15.0  # a room waits this long for a Compare; past it the page says what to lower
TITLES = {"base": "Base", "sft": "SFT", "clo": "CLO"}


def describe(answer: Answer | None, variant: str | None, expected: str, detect) -> str:
    """An answer to an `expected`-language prompt as markdown with its language (`detect(text, expected)`: the served
    model's, Services.detect), token count and speed."""
    if variant is None:
        return "*this slot is empty for this language: train an adapter, then choose it under Train → Serving*"
    if answer is None:
        return "*…*"
    if answer.error:  # the request failed part-way: what came is not an answer, so say why instead
        return f"**No answer:** {answer.error}\n\n<sub>`{variant}`</sub>"
    d: Detection | None = detect(answer.text, expected) if answer.finish_reason else None
    mark = "" if d is None else f"{badge(d, expected)} · "
    first = "" if answer.first_token_s is None else f"first token {answer.first_token_s:.2f} s · "
    batch = f" · batch of {answer.batch}" if answer.batch else ""  # sequences that shared a decoding step with it
    return (f"{answer.text}\n\n<span class='stats'>{mark}{answer.tokens} tokens · {first}"
            f"{answer.tokens_per_second:.1f} tok/s{batch} · `{variant}`</span>")


def badge(d: Detection, expected: str) -> str:
    """An answer's language in words a room reads (plain text: no glyph that needs an emoji font)."""
    if d.code == expected:
        return f"**`{d.code}`** as asked"
    return {langid.UNKNOWN: "too little text to tell its language", langid.ECHO: "repeats the prompt",
            langid.LOOP: "loops"}.get(d.code, f"**`{d.code}`**, not `{expected}`")


def pace(seconds: float, answers: list[Answer], sampling, slow_s: float = SLOW_S) -> str:
    """A line under Compare: how long its answers took, and past `slow_s` what to change so the next one is quicker."""
    done = f"{len(answers)} answers in {seconds:.1f} s"
    if seconds <= slow_s:
        return f"<span class='stats'>{done}</span>"
    if any(a.finish_reason == "length" for a in answers):  # answers ran to the limit: a lower one is quicker
        fit = max(8, int(sampling.max_tokens * slow_s / seconds) // 8 * 8)
        what = (f"answers ran to the limit of {sampling.max_tokens} tokens: start the app with `--max-tokens {fit}` "
                f"(or CLO_MAX_TOKENS={fit}) to answer within about {slow_s:.0f} s, or serve it on a GPU")
    else:
        what = ("the answers were short, so the machine itself is slow for this model: serve it on a GPU or a "
                "smaller model")
    return f"**Slow on this machine:** {done}; {what}."


def compare_stream(services: Services, prompt: str, lang: str, english: str | None, owner: str | None = None,
                   seen: list | None = None):
    """Yield (slot -> markdown) for the target-language prompt and its English version, as tokens arrive; `owner`
    (the visitor's address) is whom the engine's fair queue serves in turn; `seen`, when given, holds the latest
    snapshot of the answers themselves (the caller's timing line reads them)."""
    prompt = services.check_prompt(prompt)
    lang = services.check_lang(lang)
    english = (english or "").strip() or services.english_of(prompt, lang)
    slots = services.slots(lang)
    variants = [v for v in slots.values() if v]
    requests = services.requests(prompt, variants, owner)
    if english:
        requests += services.requests(services.check_prompt(english), variants, owner)
    def answering(asked: str):
        """Services.detect for answers to `asked`, once per finished answer (every later snapshot shows it again); an
        answer to the English prompt may drift into the target language, so that is in play too."""
        judged = {}

        def detect(text, expected):
            if (text, expected) not in judged:
                judged[text, expected] = services.detect(text, expected, also=(lang,), prompt=asked)
            return judged[text, expected]
        return detect

    on_target, on_english = answering(prompt), answering(english)
    for snapshot in services.stream(requests):
        if seen is not None:
            seen[:] = snapshot
        target = dict(zip(variants, snapshot[: len(variants)]))
        en = dict(zip(variants, snapshot[len(variants):]))
        yield ({s: describe(target.get(v), v, lang, on_target) for s, v in slots.items()},
               {s: describe(en.get(v), v, "en", on_english) if english else "*no English version: pick an example or type one*"
                for s, v in slots.items()})


def compare_api(services: Services, prompt: str, lang: str, english: str | None = None, owner: str | None = None) -> dict:
    prompt = services.check_prompt(prompt)
    lang = services.check_lang(lang)
    english = (english or "").strip() or services.english_of(prompt, lang)
    slots = {s: v for s, v in services.slots(lang).items() if v}
    sides = [("target", prompt)] + ([("english", services.check_prompt(english))] if english else [])
    requests = [r for _, text in sides for r in services.requests(text, list(slots.values()), owner)]
    answers = iter(services.generate(requests))  # both languages in one batch
    out = {"language": lang, "target": [], "english": []}
    for side, asked in sides:
        in_lang = lang if side == "target" else "en"
        for (slot, variant), a in zip(slots.items(), answers):
            out[side].append({"slot": slot, "variant": variant, "text": a.text, "error": a.error,
                              "language": None if a.error else services.detect(a.text, in_lang, also=(lang,), prompt=asked).code,
                              "tokens": a.tokens, "tokens_per_second": round(a.tokens_per_second, 2),
                              "first_token_s": None if a.first_token_s is None else round(a.first_token_s, 3),
                              "batch": a.batch})
    return out


def answer_row(heading: str, side: str) -> dict[str, gr.Markdown]:
    """A heading and one answer pane per slot (base, SFT, CLO), side by side; pane ids `{side}-{slot}`."""
    gr.Markdown(f"### {heading}")
    panes = {}
    with gr.Row(equal_height=True):
        for slot in SLOTS:
            with gr.Column():
                gr.Markdown(f"**{TITLES[slot]}**")
                panes[slot] = gr.Markdown(elem_classes=["answer"], elem_id=f"{side}-{slot}")
    return panes


def serving_line(services: Services, lang: str | None) -> str:
    if not lang:
        return ""
    return services.lineup.describe(lang, services.settings.model)



@dataclass(frozen=True)
class CompareTab:
    """What build_app wires from the Compare tab."""

    lang: object  # the language dropdown
    prompt: object  # the prompt box
    to_arena: object  # the Send to Arena button
    serving: object  # the line saying what each slot serves: refreshed when the page opens and the tab is shown
    refresh: object  # language -> that line as the line-up is now

def build(services: Services):
    default = services.target_languages()[0] if services.target_languages() else "ko"
    with gr.Row():
        lang = gr.Dropdown(services.language_choices(), value=default, label="Target language", scale=1)
        example = gr.Dropdown([p for p, _ in services.examples.get(default, [])], value=None, scale=3,
                              label="Example prompt", allow_custom_value=False)
    serving = gr.Markdown(serving_line(services, default), elem_id="serving")
    with gr.Row():  # side by side on a projector (the answers stay in sight), one above the other on a phone
        prompt = gr.Textbox(label="Prompt in the target language", lines=2, max_length=services.settings.max_prompt_chars)
        english = gr.Textbox(label="The same prompt in English (filled in for examples)", lines=2)
    with gr.Row():
        go = gr.Button("Compare", variant="primary")
        to_arena = gr.Button("Send to Arena")
    timing = gr.Markdown(elem_id="compare-timing")
    target_boxes = answer_row("In the target language", "target")
    english_boxes = answer_row("In English", "english")

    def on_lang(code):
        return gr.update(choices=[p for p, _ in services.examples.get(code, [])], value=None), serving_line(services, code)

    def pick(code, chosen):
        if not chosen:  # cleared because the visitor typed: the prompt box keeps what they typed
            return gr.skip(), gr.skip()
        return chosen, services.english_of(chosen, code) or ""

    def typed(code, text, en):
        """Typing over an example: the dropdown no longer names it, and the example's English goes with it (a typed
        prompt's English is the visitor's to give). Read from the English box, not the dropdown (whose value may
        not have reached the server yet): an example's English beside a prompt that is no longer that example."""
        examples = {english for _, english in services.examples.get(code, [])}
        now = services.english_of((text or "").strip(), code)
        if not en or en not in examples or now == en:
            return gr.skip(), gr.skip()
        return gr.update(value=None), now or ""

    outputs = [target_boxes[s] for s in SLOTS] + [english_boxes[s] for s in SLOTS]

    def run(p, code, en, request: gr.Request):
        try:  # checked before anything streams: one message for bad input, not an error on every pane
            services.check_prompt(p)
            services.check_lang(code)
            if (en or "").strip():
                services.check_prompt(en)
            with services.in_flight(request):
                line, seen, started = serving_line(services, code), [], time.perf_counter()
                # leaving the page closes this generator: the engine aborts its requests at the next step
                for target, eng in compare_stream(services, p, code, en, owner=services.voter(request)[1], seen=seen):
                    yield [target[s] for s in SLOTS] + [eng[s] for s in SLOTS] + [line, ""]
                yield [gr.skip()] * len(outputs) + [line, pace(time.perf_counter() - started, seen, services.sampling)]
        except CLOError as e:
            gr.Warning(str(e))
            yield [gr.skip()] * (len(outputs) + 2)

    lang.change(on_lang, lang, [example, serving], api_visibility="private")
    example.change(pick, [lang, example], [prompt, english], api_visibility="private")
    # on every change of the prompt, the example's own filling included (then the texts match: nothing happens), so
    # the last text typed is always handled, however busy the server (keystrokes' `input` events can be dropped)
    prompt.change(typed, [lang, prompt, english], [example, english], api_visibility="private", show_progress="hidden")
    generation = services.generation
    go.click(run, [prompt, lang, english], outputs + [serving, timing], api_visibility="private", **generation)
    prompt.submit(run, [prompt, lang, english], outputs + [serving, timing], api_visibility="private", **generation)

    def api(prompt: str, language: str, english: str = "", request: gr.Request = None) -> dict:
        """Answers of every variant (base, SFT, CLO) to the prompt and to its English version, labelled."""
        try:
            with services.in_flight(request):
                return compare_api(services, prompt, language, english, owner=services.voter(request)[1])
        except CLOError as e:
            raise refusal(e) from None

    gr.api(api, api_name="compare", **generation)
    return CompareTab(lang=lang, prompt=prompt, to_arena=to_arena, serving=serving,
                      refresh=lambda code: serving_line(services, code))
