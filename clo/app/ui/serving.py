"""Serving panel (admin, under the Train tab): which adapter fills each Compare slot per language, and which
variants the Arena draws from. A newly trained adapter is listed here and served only once it is chosen.

Every change is checked on the server (`clo.app.access.Access`): in demo mode only a session that gave the
admin password or logged in as an allowed user may apply one, whatever the page shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from clo import CLOError
from clo.engines import BASE
from clo.app.context import Services
from clo.app.ui.refusal import refusal

EMPTY = "(empty)"


def overview(services: Services) -> str:
    lines = [services.lineup.describe(code, services.settings.model) for _, code in services.served_language_choices()]
    return "\n\n".join(lines) or "*nothing is served yet*"


def form_for(services: Services, lang: str) -> list:
    """The slot dropdowns and the Arena checkboxes for `lang`, filled with what is served now."""
    slots, lineup = services.slots(lang), services.lineup
    return [gr.update(choices=[EMPTY, *lineup.candidates(lang, "sft")], value=slots["sft"] or EMPTY),
            gr.update(choices=[EMPTY, *lineup.candidates(lang, "clo")], value=slots["clo"] or EMPTY),
            gr.update(choices=[BASE, *lineup.candidates(lang)], value=lineup.arena(lang))]


def apply(services: Services, request, lang: str, sft: str | None, clo: str | None, arena: list[str]) -> str:
    """Save the speaker's choice for `lang` (refused on the server unless the session may administer)."""
    services.access.require(request)
    before = [v for v in services.slots(lang).values() if v]
    if sorted(arena or []) == sorted(before):  # the Arena list left as the slots were: it follows the new slots
        arena = None
    services.lineup.choose(lang, None if sft in (None, EMPTY) else sft, None if clo in (None, EMPTY) else clo, arena)
    return f"Saved at {time.strftime('%H:%M:%S')}: {services.lineup.describe(lang, services.settings.model)}"



@dataclass(frozen=True)
class ServingPanel:
    """What the Train tab wires from the serving panel (refreshed on load)."""

    lang: object  # the language dropdown
    refresh: object  # code -> the slots' choices and the overview
    outputs: object  # the components refresh fills

def build(services: Services):
    codes = services.served_language_choices()
    default = codes[0][1] if codes else "ko"
    with gr.Accordion("Serving: what the audience sees", open=True):
        gr.Markdown("A newly trained adapter is loaded and listed here; Compare and the Arena serve it only once "
                    "you choose it. Votes always record the adapter's version (#hash), so a retrained adapter is rated apart.")
        with gr.Row():
            lang = gr.Dropdown(codes, value=default, label="Language", scale=1)
            sft = gr.Dropdown(label="SFT slot", scale=2, elem_id="slot-sft")
            clo = gr.Dropdown(label="CLO slot", scale=2, elem_id="slot-clo")
        arena = gr.CheckboxGroup(label="The Arena draws pairs from (none ticked: the filled slots)", elem_id="arena-pool")
        save = gr.Button("Apply", variant="primary", elem_id="apply-lineup")
        status = gr.Markdown(overview(services), elem_id="lineup")

    def on_apply(code, s, c, a, request: gr.Request):
        """Saved, said twice: a toast, and the panel's overview with the change on top (every page's Compare line
        shows it when the page opens the tab or compares)."""
        try:
            said = apply(services, request, code, s, c, a)
        except CLOError as e:
            raise refusal(e) from None
        gr.Info(said.split(":", 1)[0] + f": Compare and the Arena now serve this line-up for {code}")
        return f"**{said}**\n\n{overview(services)}"

    form = [sft, clo, arena]
    lang.change(lambda code: form_for(services, code), lang, form, api_visibility="private")
    save.click(on_apply, [lang, sft, clo, arena], status, api_visibility="private")
    return ServingPanel(lang=lang, refresh=lambda code: form_for(services, code) + [overview(services)],
                        outputs=[*form, status])
