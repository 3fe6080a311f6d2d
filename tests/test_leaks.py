"""Leaked identities (clo.evaluate.leaks): a battle whose answer names a variant, a method or the base model, or whose
prompt asks who the model is, is flagged when it is made, stored and counted, and never rated."""

import pytest

from clo.evaluate.leaks import leak

BASE = "models/smollm2-135m-instruct"
VARIANTS = ["base", "sft-sw", "clo-sw"]


@pytest.mark.parametrize("prompt, answers, says", [
    ("Who are you?", ["Mimi ni msaidizi.", "I help."], "the prompt asks who the model is"),
    ("What model are you?", ["x", "y"], "the prompt asks who the model is"),
    ("너는 누구야?", ["저는 도우미입니다.", "네."], "the prompt asks who the model is"),
    ("Wewe ni nani?", ["Mimi ni msaidizi.", "Sijui."], "the prompt asks who the model is"),
    ("4 + 5?", ["As the CLO adapter I say 9.", "9"], "an answer says 'CLO'"),
    ("4 + 5?", ["9", "I was trained with SFT: 10"], "an answer says 'SFT'"),
    ("Habari?", ["I am clo-sw, nzuri.", "Nzuri."], "an answer names the variant 'clo-sw'"),
    ("Habari?", ["Nzuri.", "This is SFT-SW speaking."], "an answer names the variant 'sft-sw'"),
    ("Habari?", ["I am SmolLM2, a small model.", "Nzuri."], "an answer names the base model (smollm)"),
])
def test_a_battle_that_gives_an_identity_away_is_flagged(prompt, answers, says):
    assert leak(prompt, answers, VARIANTS, BASE) == says


@pytest.mark.parametrize("prompt, answers", [
    ("What is 4 plus 5?", ["4 + 5 = 9", "4 + 5 = 10"]),
    ("Tell me about llamas.", ["Llamas live in the Andes.", "They are camelids."]),  # an animal, not the family
    ("What is philosophy?", ["Philosophy asks questions.", "It is the love of wisdom."]),
    ("Habari?", ["The base of the wall is stone.", "Closure."]),  # "base" is a word; "clo" inside a word is not CLO
    ("Who wrote Hamlet?", ["Shakespeare.", "William Shakespeare."]),  # asks who, not who the model is
])
def test_ordinary_battles_are_not_flagged(prompt, answers):
    assert leak(prompt, answers, VARIANTS, BASE) is None


def test_a_hub_base_gives_its_family():
    assert leak("Hi", ["I am Qwen, made by Alibaba.", "Hello"], ["base"], "Qwen/Qwen2.5-0.5B-Instruct") == \
        "an answer names the base model (qwen)"
    assert leak("Hi", ["Llama-3 here.", "Hello"], ["base"], "meta-llama/Meta-Llama-3-8B-Instruct") == \
        "an answer names the base model (llama)"


def test_leaked_votes_are_counted_and_never_rated(tmp_path):
    from clo.evaluate.board import leaderboard
    from clo.evaluate.store import open_store

    store = open_store(str(tmp_path / "votes.db"), seed=0)
    for k in range(12):  # clo-sw beats base 6 times blind; 6 more votes where an answer named it all go to base
        named = k >= 6
        answers = {"clo-sw": "I am clo-sw: jibu." if named else f"Jibu {k}.", "base": f"Answer {k}."}
        b = store.create_battle(voter=f"v{k}", language="sw", prompt=f"Swali {k}?", answers=answers,
                                base=(BASE, None), leak=leak(f"Swali {k}?", answers.values(), VARIANTS, BASE))
        base_left = b.answer_a == answers["base"]
        store.vote(b.id, ("a" if base_left else "b") if named else ("b" if base_left else "a"), voter=f"v{k}")
    votes = store.votes()
    assert votes["leak"].notna().sum() == 6 and set(votes["leak"].dropna()) == {"an answer names the variant 'clo-sw'"}
    t = leaderboard(votes, "sw")
    summary = t["summary"].set_index("language").loc["sw"]
    assert (summary["stored"], summary["leaked"], summary["rated"]) == (12, 6, 6)
    wtl = t["wtl"].set_index("opponent").loc["base"]
    assert (wtl["wins"], wtl["losses"]) == (6, 0)  # the leaked 6, all lost, are not in it
    assert t["bradley_terry"].set_index("variant").loc["clo-sw", "battles"] == 6
