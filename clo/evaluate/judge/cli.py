"""`python -m clo judge`: the win rate of one variant against another, by an LLM judge.

    python -m clo judge --adapters clo-ko,sft-ko --lang ko --prompts sample \\
        --judge-url http://127.0.0.1:8001 --judge-model Qwen/Qwen2.5-72B-Instruct --limit 50

answers the prompts (clo.evaluate.judge.prompts; in the target language, and their English versions) with both
variants through the project's engines, asks the judge which answer of each pair is better (clo.evaluate.judge.run),
stores its verdicts as judge votes, and prints the win rate of the first variant against the second with a 95%
bootstrap interval, per language, the length-controlled win rate and the judge's position consistency (every pair is
asked in both orders; a disagreement is a tie). `--json` prints one JSON object instead (`results_json`), the
progress going to stderr. The judge is checked before minutes of generation; a rerun skips what was judged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

from clo import CLOError
from clo.cli import above_zero, add_serving_options, add_store_option, lang_arg
from clo.evaluate.judge.client import API_KEY_VARIABLE, JudgeClient, excerpt
from clo.evaluate.judge.prompts import PromptPair, load_prompt_pairs
from clo.evaluate.judge.protocol import CONSTRAINTS
from clo.evaluate.judge.run import CONSISTENCY_FLOOR, Item, JudgeRun, judge_items, judge_results
from clo.hub import served_name

def add_parser(subparsers) -> argparse.ArgumentParser:
    """`python -m clo judge`: the parser, added to the command line's subparsers."""
    p = subparsers.add_parser(
        "judge", help="an LLM judge (AlpacaEval's pairwise protocol): win rate of one variant against another",
        description="Answer the prompts with both variants (target language and English), ask an OpenAI-compatible "
        "judge which answer of each pair is better, store its verdicts as judge votes, and print the first variant's "
        f"win rate with a 95% bootstrap interval and the length-controlled win rate. API key: ${API_KEY_VARIABLE}.")
    p.add_argument("--adapters", required=True, metavar="FIRST,SECOND",
                   help="the two variants, e.g. clo-ko,sft-ko (an adapter under --adapters-dir, a hub repo owner/name[@revision], "
                        "or base)")
    p.add_argument("--lang", required=True, type=lang_arg, help="the target language of the prompts")
    p.add_argument("--prompts", default="sample", metavar="sample|held-out|FILE|HUB_ID",
                   help="the shipped sample, its held-out fifth (never trained on), a JSONL file, or a hub prompt set "
                        "such as tatsu-lab/alpaca_eval")
    p.add_argument("--judge-url", default=os.environ.get("CLO_JUDGE_URL"), help="the judge's OpenAI-compatible server "
                   "(default $CLO_JUDGE_URL), e.g. http://127.0.0.1:8001")
    p.add_argument("--judge-model", default=os.environ.get("CLO_JUDGE_MODEL"),
                   help="the judge's model name at that server (default $CLO_JUDGE_MODEL)")
    p.add_argument("--judge-constraint", default="auto", choices=CONSTRAINTS,
                   help="how every reply is made readable: auto (choice on vLLM, else logprobs)")
    p.add_argument("--judge-timeout", type=above_zero(float), default=120.0, help="seconds to wait for one verdict")
    p.add_argument("--concurrency", type=above_zero(int), default=16, help="judgments in flight at once")
    p.add_argument("--limit", type=above_zero(int), help="only the first N prompts")
    add_store_option(p)
    p.add_argument("--seed", type=int, default=0, help="draws which answer is shown first, per pair")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument("--language-gate", default="on", choices=("on", "off"), help="on (default): a pair where only one "
                   "answer is in the prompt's language goes to it, whatever the judge said; the judge's own rate is "
                   "printed beside, with how many pairs the gate decided")
    p.add_argument("--json", action="store_true", help="print one JSON object (per language: wins, ties, losses, n, "
                   "win_rate and its interval, length_controlled, position_consistency; the run's counts); the "
                   "progress goes to stderr")
    add_serving_options(p, max_tokens=512, max_tokens_help="new tokens per answer")
    p.add_argument("--translator", default="m2m100", choices=("m2m100", "nllb"),
                   help="translates prompts given only in English (a hub set) into --lang")
    p.add_argument("--translator-model", help="the translation model (default: the translator's usual one)")
    p.add_argument("--cache-dir", default="cache", help="where translations are cached")
    p.set_defaults(func=cmd_judge)
    return p


def answer_pairs(engine, prompts: list[PromptPair], lang: str, variants: list[str], sampling) -> tuple[list[Item], int]:
    """Both variants' answers to every prompt in `lang` and to its English version, as items to judge; and how many
    prompts were left out because a generation failed. The engine is closed afterwards."""
    from clo.engines import Request

    try:
        served = engine.variants()
        for v in variants:
            if v not in served:
                raise CLOError(f"unknown adapter {v!r}: the engine serves {', '.join(served)}")
        sets = [(lang, [p.target for p in prompts])]
        if lang != "en":
            sets.append(("en", [p.english for p in prompts if p.english]))
        items, failed = [], 0
        for language, texts in sets:
            print(f"[clo] answering {len(texts)} {language} prompts with {variants[0]} and {variants[1]}", flush=True)
            answers = engine.generate([Request(v, [{"role": "user", "content": t}], sampling) for t in texts for v in variants])
            for k, text in enumerate(texts):
                pair = answers[2 * k: 2 * k + 2]
                if any(a.error for a in pair):
                    failed += 1
                    continue
                items.append(Item(language, text, {a.variant: a.text for a in pair},
                                  {v: served[v] for v in variants}, engine.kind, engine.base_identity(),
                                  {v: s for v, s in engine.sources().items() if v in variants}))
        return items, failed
    finally:
        engine.close()


def cmd_judge(args: argparse.Namespace) -> None:
    if not args.json:
        return _judge(args)
    with contextlib.redirect_stdout(sys.stderr):  # the progress lines; stdout holds the JSON object alone
        report = _judge(args)
    print(json.dumps(report, ensure_ascii=False, indent=2))


def _judge(args: argparse.Namespace) -> dict:
    from clo.engines import BASE, Sampling, load_engine
    from clo.evaluate.store import open_store

    variants = [v.strip() for v in args.adapters.split(",") if v.strip()]
    if len(variants) != 2 or variants[0] == variants[1]:
        raise CLOError(f"--adapters takes two different variants, FIRST,SECOND (e.g. clo-ko,sft-ko), got {args.adapters!r}")
    if not args.judge_url:
        raise CLOError("give the judge's server with --judge-url URL (or set CLO_JUDGE_URL)")
    if not args.judge_model:
        raise CLOError("give the judge's model with --judge-model NAME (or set CLO_JUDGE_MODEL)")
    # cheap checks first: the judge answers and the prompts read, before minutes of generation
    client = JudgeClient(args.judge_url, args.judge_model, api_key=os.environ.get(API_KEY_VARIABLE) or None,
                         constraint=args.judge_constraint, timeout=args.judge_timeout, concurrency=args.concurrency)
    try:
        prompts = load_prompt_pairs(args.prompts, args.lang, args.limit, args.translator, args.translator_model,
                                    args.cache_dir)
        store = open_store(args.db)
        adapters = [v for v in variants if v != BASE]
        engine = load_engine(args.engine, model=args.model, adapters_dir=args.adapters_dir, adapters=adapters or None,
                             url=args.url)
        variants = [served_name(v) for v in variants]  # a hub repo owner/name is served as its name
        items, failed = answer_pairs(engine, prompts, args.lang, variants, Sampling(max_tokens=args.max_tokens))
        print(f"[clo] judging {len(items)} pairs in both orders with {client.model} at {client.url} "
              f"({client.constraint}, {client.concurrency} in flight)", flush=True)
        step = max(1, len(items) // 10)

        def progress(k: int, n: int) -> None:
            if k % step == 0 or k == n:
                print(f"[clo] judged {k}/{n}", flush=True)

        run = judge_items(items, client, store, seed=args.seed, progress=progress)
        results = judge_results(store.votes(), items, client.model, client.protocol.name, variants[0], variants[1],
                                args.bootstrap, args.seed, detect=language_of(args) if args.language_gate == "on" else None)
    finally:
        client.close()
    print(f"\n{variants[0]} vs {variants[1]}, judged by {client.model} ({client.protocol.name}) in both orders; a pair "
          "the two orders disagree on is a tie; ties count half")
    for language, r in results.items():
        print(f"  {language}: {describe(r)}")
    notes = [f"{run.judged} judged now", f"{run.skipped} already judged (skipped)",
             f"{run.identical} identical pairs (ties, judge not asked)", f"{len(run.unreadable)} unreadable replies"]
    if failed:
        notes.append(f"{failed} prompts whose generation failed")
    tokens = f"; {run.tokens / run.judged:.0f} judge tokens per verdict (both orders)" if run.judged and run.tokens else ""
    print(f"  {', '.join(notes)}{tokens}")
    if run.unreadable:
        print(f"  unreadable (kept apart, never counted; a rerun asks again), e.g. {excerpt(run.unreadable[0])}; "
              "a judge that answers in plain text may need --judge-constraint none")
    return results_json(variants, client.model, client.protocol.name, results, run, failed) | {
        "language_gate": args.language_gate}


def language_of(args: argparse.Namespace):
    """The language gate's detector: the served model's language ID (its own detector first, clo.models.table), an
    English prompt's answers judged with the target language in play."""
    from clo.evaluate import langid
    from clo.models.table import entry_for

    entry = entry_for(args.model)
    own = entry.detect if entry else None
    return lambda text, lang, prompt: langid.detect(text, own, lang=lang, also=(args.lang,) if lang == "en" else (),
                                                     prompt=prompt)


def describe(r: dict) -> str:
    """One language's line of the judge's results (`judge_results`)."""
    if not r["n"]:
        return "no verdicts"
    gated = ""
    if r.get("gate_decided"):
        j = r["judge_only"]
        gated = (f" with the language gate, which decided {r['gate_decided']} pairs (the judge named the same winner "
                 f"in {r['gate_agreed']}); the judge alone: {100 * j['rate']:.1f}% [{100 * j['lower']:.1f}, "
                 f"{100 * j['upper']:.1f}] ({j['wins']} W / {j['ties']} T / {j['losses']} L);")
    line = (f"win rate {100 * r['rate']:.1f}% [95% CI {100 * r['lower']:.1f}, {100 * r['upper']:.1f}] "
            f"(n = {r['n']}: {r['wins']} W / {r['ties']} T / {r['losses']} L);{gated} "
            + (r["length_note"] if r.get("length_note") else f"length-controlled {100 * r['length_controlled']:.1f}%"))
    if r["both_orders"]:
        line += (f"; its two orders agreed on {100 * r['position_consistency']:.0f}% of {r['both_orders']} pairs, and it "
                 f"named the answer shown first in {100 * r['first_shown']:.0f}% of its choices (50% is no bias)")
        if r["position_consistency"] < CONSISTENCY_FLOOR:
            line += "; it mostly follows the order shown: its win rates mean little"
    return line


def results_json(variants: list[str], judge: str, protocol: str, results: dict, run: JudgeRun, failed: int) -> dict:
    """What `--json` prints: the variants, the judge, per language its numbers (NaN as null), the run's counts."""
    def number(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    return {"first": variants[0], "second": variants[1], "judge": judge, "protocol": protocol, "orders": 2,
            "languages": {lang: {"wins": r["wins"], "ties": r["ties"], "losses": r["losses"], "n": r["n"],
                                 "win_rate": number(r["rate"]), "lower": number(r["lower"]), "upper": number(r["upper"]),
                                 "judge_only": {"win_rate": number(r["judge_only"]["rate"]),
                                                "lower": number(r["judge_only"]["lower"]),
                                                "upper": number(r["judge_only"]["upper"]),
                                                **{k: r["judge_only"][k] for k in ("wins", "ties", "losses")}},
                                 "gate_decided": r["gate_decided"], "gate_agreed": r["gate_agreed"],
                                 "length_controlled": number(r["length_controlled"]),
                                 "length_control_note": r.get("length_note"),
                                 "position_consistency": number(r["position_consistency"]),
                                 "both_orders": r["both_orders"], "first_shown": number(r["first_shown"]),
                                 "follows_order": bool(r["both_orders"]) and r["position_consistency"] < CONSISTENCY_FLOOR}
                          for lang, r in results.items()},
            "run": {"judged": run.judged, "already_judged": run.skipped, "identical": run.identical,
                    "unreadable": len(run.unreadable), "consistent": run.consistent, "failed_prompts": failed}}
