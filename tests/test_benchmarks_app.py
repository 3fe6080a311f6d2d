"""Benchmarks in the app: the Train tab's admin-only Evaluate job (`python -m clo evaluate` as a subprocess, its scores
copied into the app's vote store once it has ended) and the Leaderboard's Benchmarks table."""

from __future__ import annotations

import time

import pytest
from conftest import make_adapters

from clo import CLOError


@pytest.fixture
def services(tiny_model, project):
    from clo.app.context import Services
    from clo.app.settings import Settings

    make_adapters(tiny_model, project / "adapters")
    s = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db"))
    yield s
    s.close()


@pytest.mark.slow
def test_an_evaluation_job_scores_the_served_variants_and_the_leaderboard_shows_them(services):
    from clo.app.ui.leaderboard import served_base
    from clo.evaluate.board import benchmarks_shown

    job = services.jobs.start_evaluation(None, ["base", "clo-ko"], "smoke_ko,smoke_en", limit=6)
    assert job["kind"] == "evaluate" and "-m clo evaluate" in job["command"]
    with pytest.raises(CLOError, match="a run is already going"):  # one job at a time, evaluation included
        services.jobs.start_evaluation(None, ["base"], "smoke_ko")
    deadline = time.time() + 600
    while services.jobs.running() and time.time() < deadline:
        time.sleep(0.5)
    assert not services.jobs.running(), services.jobs.tail()
    while services.store.benchmarks().empty and time.time() < deadline:  # copied by the watcher as the job ends
        time.sleep(0.2)
    assert services.jobs.hot_load(None) == [] and services.jobs.collect() == 0  # copied once
    stored = services.store.benchmarks()
    services.jobs.loaded.clear()  # as after a restart of the app: the finished job is seen again, its rows kept once
    assert services.jobs.collect() == 0 and len(services.store.benchmarks()) == len(stored)
    assert set(stored["variant"]) == {"base", "clo-ko"} and set(stored["task"]) >= {"smoke_ko", "smoke_en"}
    shown = benchmarks_shown(stored, "ko", served_base(services))
    assert set(shown["variant"]) == {"base", "clo-ko"} and set(shown["language"]) == {"ko", "en"}
    assert shown["accuracy"].str.contains("±").all()
    assert benchmarks_shown(stored, "ko", "sha256:another-base").empty  # another experiment's scores stay apart


def test_evaluation_is_for_admins_and_checks_what_it_is_given(services, tiny_model):
    from clo.app.access import Access
    from clo.app.jobs import Jobs

    locked = Jobs(str(tiny_model), "adapters", services.engine, Access(demo_mode=True, password="pw"),
                  store=services.store)
    with pytest.raises(CLOError):
        locked.start_evaluation(None, ["base"], "smoke")
    for variants, tasks, limit, said in ((["nope"], "smoke", None, "choose variants this app serves"),
                                         ([], "smoke", None, "choose variants this app serves"),
                                         (["base"], "smoke; rm -rf /", None, "tasks must be a task set"),
                                         (["base"], "", None, "tasks must be a task set"),
                                         (["base"], "smoke", 0, "the limit must be a whole number")):
        with pytest.raises(CLOError, match=said):
            services.jobs.start_evaluation(None, variants, tasks, limit)
    assert services.jobs.current() is None  # nothing was started
