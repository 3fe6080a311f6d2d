"""Language ID on short answers: the labelled set in tests/data/langid_answers.jsonl judged both ways, side by side.

    python bench/langid.py            # a markdown table: per true language, right / wrong / unknown, before and after

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
LABELLED = ROOT / "tests" / "data" / "langid_answers.jsonl"


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


def main() -> None:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    judged = judge_all(rows)
    before, after = tally(rows, judged["before"]), tally(rows, judged["after"])
    print(f"# Language ID on {len(rows)} short answers ({LABELLED.relative_to(ROOT)})\n")
    print("| true language | n | before: right / wrong / unknown | after: right / wrong / unknown |")
    print("| --- | ---: | --- | --- |")
    for lang in sorted(before, key=lambda k: (-before[k]["n"], k)):
        b, a = before[lang], after[lang]
        print(f"| {lang} | {b['n']} | {b['right']} / {b['wrong']} / {b['unknown']} ({b['right'] / b['n']:.0%} right) "
              f"| {a['right']} / {a['wrong']} / {a['unknown']} ({a['right'] / a['n']:.0%} right) |")
    for name in ("before", "after"):
        t = tally(rows, judged[name])
        right = sum(v["right"] for v in t.values())
        wrong = sum(v["wrong"] for v in t.values())
        hit, of = english_called_target(rows, judged[name])
        print(f"\n{name}: {right}/{len(rows)} right ({right / len(rows):.1%}), {wrong} wrong; English answers to "
              f"other-language prompts called the prompt's language: {hit} of {of}; {judged[name + '_ms']:.2f} ms a text")


if __name__ == "__main__":
    main()
