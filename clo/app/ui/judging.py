"""The Train tab's "LLM judge" panel: an admin starts a judging job over the stored battles and watches its progress
(the job itself: clo.evaluate.judge.background.Judging)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from clo import CLOError
from clo.app.ui.refusal import refusal


@dataclass(frozen=True)
class JudgePanel:
    """What the Train tab wires from the LLM judge panel (refreshed on load)."""

    refresh: object  # the handler that shows the judging job's state
    outputs: object  # the components it fills

def build(services):
    """The Train tab's "LLM judge" accordion: the judge's URL and model (the configured ones to start with), a
    language, a button that starts the job, and its progress while it runs."""
    judging, s = services.judging, services.settings
    choices = [("All languages", "all")] + services.served_language_choices()
    with gr.Accordion("LLM judge: the paper's metric beside the people", open=False):
        gr.Markdown("Judges the stored blind battles with an OpenAI-compatible judge (AlpacaEval's pairwise protocol; "
                    "`python -m clo judge` does the same from the command line). Its verdicts are stored as judge votes "
                    "and shown on the Leaderboard beside the people's, never counted with them. A pair this judge has "
                    "judged is never judged again, so a stopped job resumes.")
        with gr.Row():
            url = gr.Textbox(s.judge_url or "", label="Judge URL", placeholder="http://127.0.0.1:8001", scale=2,
                             elem_id="judge-url")
            model = gr.Textbox(s.judge_model or "", label="Judge model (as its server names it)", scale=2,
                               elem_id="judge-model")
            lang = gr.Dropdown(choices, value="all", label="Battles in", scale=1)
        start = gr.Button("Judge the stored battles", variant="primary", elem_id="judge-start")
        status = gr.Markdown(elem_id="judge-status")
    timer = gr.Timer(2, active=False)

    def on_judge_start(u, m, code, request: gr.Request):
        try:
            judging.start(request, u, m, None if code in (None, "", "all") else code)
        except CLOError as e:
            raise refusal(e) from None
        return judging.describe(), gr.Timer(active=True)

    def on_judge_tick(request: gr.Request):
        if not services.access.allows(request):  # the status names the judge's URL: admins only
            return "", gr.Timer(active=False)
        return judging.describe(), gr.Timer(active=judging.state()["status"] == "running")

    start.click(on_judge_start, [url, model, lang], [status, timer], api_visibility="private")
    timer.tick(on_judge_tick, None, [status, timer], api_visibility="private", show_progress="hidden", concurrency_id="poll")
    return JudgePanel(refresh=on_judge_tick, outputs=[status, timer])
