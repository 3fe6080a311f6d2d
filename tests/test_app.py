"""The app's entry point: a module-level Blocks and its data preview."""

import gradio as gr


def test_app_builds_and_previews_pairs(project):
    import app

    assert isinstance(app.demo, gr.Blocks)
    table = app.preview_pairs("sw", 3)
    assert len(table) == 6
    target_rows, english_rows = table.iloc[:3], table.iloc[3:]
    assert all(q.startswith("x_sw: ") for q in target_rows["query"])
    assert all(q.startswith("x_en: ") for q in english_rows["query"])
    # the chosen answer of the x_sw query is the rejected one of its x_en query, and vice versa
    assert list(target_rows["chosen"]) == list(english_rows["rejected"])
    assert list(target_rows["rejected"]) == list(english_rows["chosen"])


def test_app_reports_bad_input_in_the_ui(project):
    import app
    import pytest

    with pytest.raises(gr.Error, match="asked for 500 pairs"):
        app.preview_pairs("ko", 500)
