"""The Gradio app, one module per tab; `build_app(services)` assembles them (app.py calls it).

    from clo.app.ui import build_app
    from clo.app.context import Services
    from clo.app.settings import Settings
    demo = build_app(Services(Settings(model="models/tiny")))
"""

from __future__ import annotations

import importlib.util
import os

import gradio as gr

from clo.app.ui import arena, compare, data, leaderboard, train
from clo.app.context import Services

# What gradio's OAuth (gradio/oauth.py) needs on a Space: the variables the platform sets with `hf_oauth: true` in the
# README's front matter, and gradio[oauth]'s packages; a LoginButton without them stops the app at launch
OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")
OAUTH_PACKAGES = ("authlib", "itsdangerous")


def sign_in_missing() -> str | None:
    """Why Hugging Face sign-in cannot work here (None when it can): gradio's real OAuth runs only on a Space
    (SYSTEM=spaces and SPACE_ID, gradio.utils.get_space) with the platform's OAuth variables and gradio[oauth]."""
    from gradio.utils import get_space

    if get_space() is None:
        return "this is not a Hugging Face Space"
    unset = [v for v in OAUTH_VARIABLES if not os.environ.get(v)]
    if unset:
        return (f"{', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set: add `hf_oauth: true` to the Space's "
                "README front matter")
    absent = [p for p in OAUTH_PACKAGES if importlib.util.find_spec(p) is None]
    if absent:
        return (f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not installed: add gradio[oauth] to "
                "requirements.txt")
    return None
# answers in equal boxes; the line under each (language, tokens, speed) readable from the back of a room
CSS = """
.answer { min-height: 6em; padding: 0.5em; border: 1px solid var(--border-color-primary); border-radius: 8px; }
.stats { font-size: 0.95rem; color: var(--body-text-color); opacity: 0.8; }
"""


def build_app(services: Services) -> gr.Blocks:
    s = services.settings
    wanted = s.demo_mode and bool(s.allowed_users)  # allowed accounts unlock Train by signing in
    missing = sign_in_missing() if wanted else None
    sign_in = wanted and missing is None  # the login button, only where gradio can really sign a visitor in
    if wanted and missing:
        print(f"[clo] Hugging Face sign-in is off ({missing}), so CLO_ALLOWED_USERS cannot unlock Train"
              + ("; the admin password still does" if s.admin_password else ""), flush=True)
    # delete_cache: files served to visitors (vote exports, plots) are dropped after an hour, checked hourly
    with gr.Blocks(title="Cross-Lingual Optimization", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# Cross-Lingual Optimization (CLO)\n"
            "Lee et al., ACL 2025: an English-centric chat model learns a target language from English instruction data "
            "and a translation model, and keeps its English. Compare the base model, SFT and CLO, judge them blind, "
            f"and watch the tally.\n\n**Running on:** {services.running_on}"
        )
        with gr.Tabs(overflow_behavior="wrap") as tabs:  # on a phone every tab stays in sight
            with gr.Tab("Compare", id="compare") as compare_shown:
                compare_tab = compare.build(services)
            with gr.Tab("Arena", id="arena"):
                arena_tab = arena.build(services, default_lang=(services.target_languages() or ["ko"])[0])
            with gr.Tab("Leaderboard", id="leaderboard") as board_tab:
                board = leaderboard.build(services)
            with gr.Tab("Train", id="train") as train_shown:
                locked = s.demo_mode
                with gr.Row(visible=locked) as gate:  # demo mode: only the way in shows, and only one that can work
                    password = unlock = None
                    if s.admin_password:
                        password = gr.Textbox(type="password", label="Admin password", scale=3)
                        unlock = gr.Button("Unlock training", scale=1)
                    if sign_in:
                        gr.LoginButton(scale=1, elem_id="sign-in")
                    if not s.admin_password and not s.allowed_users:
                        gr.Markdown("Training is closed on this demo: it has no admin password (`CLO_ADMIN_PASSWORD`) "
                                    "and no allowed accounts (`CLO_ALLOWED_USERS`).", elem_id="train-closed")
                    elif not s.admin_password and not sign_in:
                        gr.Markdown("Training is closed on this demo: its allowed accounts (`CLO_ALLOWED_USERS`) "
                                    "cannot sign in here, since Hugging Face sign-in is off.", elem_id="train-closed")
                train_tab = train.build(services, visible=not locked)
            with gr.Tab("Data", id="data"):
                data_tab = data.build(services)

        def check_password(given, request: gr.Request):
            if services.access.unlock(request, given):  # the server remembers this session: every change checks it
                return gr.update(visible=False), gr.update(visible=True), gr.Timer(active=True)  # on the Train tab
            gr.Warning("wrong password")  # a toast: the gate stays usable for another try
            return gr.update(), gr.update(), gr.update()

        def on_load(request: gr.Request, profile: gr.OAuthProfile | None = None):
            if profile is not None:
                services.access.login(request, profile.username)
            show = services.access.allows(request)
            return gr.update(visible=not show), gr.update(visible=show), gr.update()

        if not sign_in:
            on_load_with_profile = on_load

            def on_load(request: gr.Request):  # noqa: F811 (no sign-in: nobody has a profile)
                return on_load_with_profile(request, None)

        def on_tab(evt: gr.SelectData, request: gr.Request):  # the Train tab's job polling runs only while it is open
            return gr.Timer(active=evt.value == "Train" and services.access.allows(request))

        tabs.select(on_tab, None, train_tab.timer, api_visibility="private", show_progress="hidden")
        compare_tab.to_arena.click(lambda p, code: (p, code, gr.Tabs(selected="arena")),
                                   [compare_tab.prompt, compare_tab.lang], [arena_tab.prompt, arena_tab.lang, tabs],
                                   api_visibility="private")
        if unlock is not None:
            unlock.click(check_password, password, [gate, train_tab.panel, train_tab.timer], api_visibility="private",
                         show_progress="hidden")
        demo.load(on_load, None, [gate, train_tab.panel, train_tab.timer], api_visibility="private")
        # a name free now, not when the app started (another page's run may have taken that one); then the preview
        demo.load(train_tab.fresh_name, train_tab.inputs, train_tab.name, api_visibility="private").then(
            train_tab.on_preview, train_tab.inputs, train_tab.preview, api_visibility="private")
        # the line-up as it is now, not as it was when the app started; again whenever Compare is shown
        demo.load(compare_tab.refresh, compare_tab.lang, compare_tab.serving, api_visibility="private")
        compare_shown.select(compare_tab.refresh, compare_tab.lang, compare_tab.serving, api_visibility="private",
                             show_progress="hidden")
        demo.load(train_tab.serving.refresh, train_tab.serving.lang, train_tab.serving.outputs, api_visibility="private")
        train_shown.select(train_tab.serving.refresh, train_tab.serving.lang, train_tab.serving.outputs,
                           api_visibility="private", show_progress="hidden")  # another admin's choice, since
        demo.load(train_tab.judge.refresh, None, train_tab.judge.outputs, api_visibility="private")
        demo.load(data.preview_pairs, [data_tab.lang, data_tab.pairs], data_tab.table, api_visibility="private")
        demo.load(board.update, board.inputs, board.outputs, api_visibility="private")
        board_tab.select(board.update, board.inputs, board.outputs, api_visibility="private", show_progress="hidden")
    demo.queue(default_concurrency_limit=s.concurrency, max_size=s.queue_size)
    return demo
