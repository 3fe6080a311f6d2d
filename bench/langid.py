"""Language ID on short answers: the labelled sets in tests/data/ judged both ways, side by side.

    python bench/langid.py            # markdown tables: per true language, right / wrong / unknown, before and after

Two sets: langid_answers.jsonl, on which the detector was tuned, and langid_heldout.jsonl, written after the tuning
and never used for it (its figures are the honest ones); then langid_echoes.jsonl, answers that repeat their prompt.
"before" is version 1's judging (all of lingua's languages, low-accuracy mode); "after" is the judging the app,
`generate`, `replicate` and `python -m clo langid` use (clo.evaluate.langid.detect with the prompt's language: the
languages in play, drift languages weighted down). A row labelled "unknown" is right when the detector says unknown.
The line under the table counts the error that matters most for fidelity: an answer in English called the prompt's
language.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "tests" / "data"
SETS = {"tuned on": DATA / "langid_answers.jsonl", "held out": DATA / "langid_heldout.jsonl"}
ECHOES = DATA / "langid_echoes.jsonl"


def judge_all(rows: list[dict]) -> dict[str, list[str]]:
    from clo.evaluate.langid import detect

    out = {}
    for name, call in (("before", lambda r: detect(r["text"]).code),
                       ("after", lambda r: detect(r["text"], lang=r["prompt_lang"]).code)):
        started = time.perf_counter()
        out[name] = [call(r) for r in rows]
        out[name + "_ms"] = 1000 * (time.perf_counter() - started) / len(rows)
    return out


def tally(rows: list[dict], codes: list[str]) -> dict[str, dict[str, int]]:
    t: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "right": 0, "wrong": 0, "unknown": 0})
    for r, code in zip(rows, codes):
        row = t[r["lang"]]
        row["n"] += 1
        if code == r["lang"]:
            row["right"] += 1
        elif code == "unknown":
            row["unknown"] += 1
        else:
            row["wrong"] += 1
    return dict(t)


def english_called_target(rows: list[dict], codes: list[str]) -> tuple[int, int]:
    """(English answers to non-English prompts called the prompt's language, how many such answers)."""
    mine = [(r, c) for r, c in zip(rows, codes) if r["lang"] == "en" and r["prompt_lang"] != "en"]
    return sum(c == r["prompt_lang"] for r, c in mine), len(mine)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def table(name: str, path: Path) -> None:
    rows = read(path)
    judged = judge_all(rows)
    before, after = tally(rows, judged["before"]), tally(rows, judged["after"])
    print(f"# Language ID on {len(rows)} short answers, {name} ({path.relative_to(ROOT)})\n")
    print("| true language | n | before: right / wrong / unknown | after: right / wrong / unknown |")
    print("| --- | ---: | --- | --- |")
    for lang in sorted(before, key=lambda k: (-before[k]["n"], k)):
        b, a = before[lang], after[lang]
        print(f"| {lang} | {b['n']} | {b['right']} / {b['wrong']} / {b['unknown']} ({b['right'] / b['n']:.0%} right) "
              f"| {a['right']} / {a['wrong']} / {a['unknown']} ({a['right'] / a['n']:.0%} right) |")
    for when in ("before", "after"):
        t = tally(rows, judged[when])
        right = sum(v["right"] for v in t.values())
        wrong = sum(v["wrong"] for v in t.values())
        hit, of = english_called_target(rows, judged[when])
        print(f"\n{when}: {right}/{len(rows)} right ({right / len(rows):.1%}), {wrong} wrong; English answers to "
              f"other-language prompts called the prompt's language: {hit} of {of}; {judged[when + '_ms']:.2f} ms a text")
    print()


def echoes() -> None:
    """Answers that repeat their prompt: judged with it, per kind of row."""
    from clo.evaluate.langid import detect

    rows = read(ECHOES)
    print(f"# Echoes of the prompt ({ECHOES.relative_to(ROOT)}), judged with the prompt\n")
    print("| kind | n | right |")
    print("| --- | ---: | ---: |")
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        right = sum(detect(r["text"], lang=r["prompt_lang"], prompt=r["prompt"]).code == r["label"] for r in mine)
        print(f"| {kind} | {len(mine)} | {right} |")


def main() -> None:
    for name, path in SETS.items():
        table(name, path)
    echoes()


if __name__ == "__main__":
    main()
