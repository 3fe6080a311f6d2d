"""A visitor's mistake, or a state the page explains (a name taken, nothing running, a rate limit), is a refusal:
shown on the page as Gradio's error toast and one line in the terminal, without a traceback. Gradio prints the
traceback of every `gr.Error` unless told not to, which made an ordinary message look like a crash; a real fault
(any other exception) still prints its traceback."""

from __future__ import annotations

import gradio as gr

from clo import CLOError


def refusal(error: CLOError) -> gr.Error:
    """The error to raise for `error`: on the page in full, in the terminal as one line."""
    print(f"[clo] refused: {str(error).splitlines()[0][:300]}", flush=True)
    return gr.Error(str(error), print_exception=False)
