"""Export the vote store's votes, people's and judges', to a file: CSV, JSONL or Parquet, by the file's suffix; or
the people's battles in FastChat's clean-battle shape (`fastchat`, a JSON array), which its rating code reads.

    export_votes(store, "votes.csv")                 # or votes.jsonl, votes.parquet; `python -m clo votes export`
    export_votes(store, "ko.parquet", language="ko", overwrite=True)
    export_votes(store, "battles.json", fmt="fastchat")   # `python -m clo votes export --format fastchat`

A file is written whole or not at all (clo.files.atomic_path), never over the store itself or any SQLite database;
CSV cells that a spreadsheet would run as formulas are quoted (`spreadsheet_safe`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from clo import CLOError
from clo.files import atomic_path, check_output_file

if TYPE_CHECKING:
    from clo.evaluate.store import VoteStore

EXPORT_FORMATS = ("csv", "jsonl", "parquet", "fastchat")
# FastChat's `winner` for each of our outcomes (its clean_battle_data: the left answer is model_a)
FASTCHAT_WINNER = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula (OWASP, CSV injection)


def spreadsheet_safe(frame):
    """`frame` with every text cell that a spreadsheet would run as a formula (starting with = + - @, a tab or a
    carriage return) prefixed with a single quote, as OWASP advises for CSV files; numbers are left as they are.
    For CSV only: JSONL and Parquet keep the text exact."""
    def safe(value):
        return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    from pandas.api.types import is_numeric_dtype

    frame = frame.copy()
    for column in frame.columns:
        if not is_numeric_dtype(frame[column]):  # text, whether pandas holds it as object or str
            frame[column] = frame[column].map(safe)
    return frame


def export_format(path: str | Path, fmt: str | None = None) -> str:
    """The export format: `fmt` when given, else the file's suffix; a `fmt` that contradicts the suffix is refused."""
    suffix = Path(path).suffix.lstrip(".").lower()
    if fmt and fmt.lower() == "fastchat":
        if suffix != "json":
            raise CLOError(f"--format fastchat writes a JSON array: name the file .json, not {Path(path).name}")
        return "fastchat"
    if suffix == "json" and not fmt:
        raise CLOError(f"{Path(path).name}: a .json file is FastChat's battle format; give --format fastchat, or name "
                       "the file .csv, .jsonl or .parquet")
    if fmt and suffix in EXPORT_FORMATS and suffix != fmt.lower():
        raise CLOError(f"--format {fmt} contradicts the file name {Path(path).name} (.{suffix}); "
                       f"name the file .{fmt.lower()} or drop --format")
    fmt = (fmt or suffix).lower()
    if fmt not in EXPORT_FORMATS:
        raise CLOError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    return fmt


def fastchat_battles(votes) -> list[dict]:
    """The people's votes (a judge's are left out) as FastChat's clean battles, one dict each, oldest first:
    question_id (the battle), model_a / model_b (the left and right variant, a retrained adapter as `name@hash`, as
    our ratings key it), winner (model_a, model_b, tie, or "tie (bothbad)"), judge (`arena_user_` and the voter's
    pseudonym: never an address), conversation_a / conversation_b (the prompt and each answer as chat messages),
    turn 1, anony (a blind battle that gave no identity away: what FastChat's ratings read), language (its English
    name, as FastChat writes it), tstamp (Unix seconds), and our base_model and language code besides. Votes on
    several base models are refused: FastChat would rate them together."""
    import datetime as dt

    from clo.evaluate.ratings import HUMAN, anonymous, bases, rater_votes, version_keys
    from clo.languages import language

    people = rater_votes(votes, HUMAN, blind_only=False) if len(votes) else votes
    if len(bases(people)) > 1:
        raise CLOError(f"these votes are on {len(bases(people))} base models ({', '.join(b['label'] for b in bases(people))}):"
                       " FastChat would rate them together; export one (--base)")
    if not len(people):
        return []
    keyed = version_keys(people)
    anony = anonymous(people)
    out = []
    for (_, v), a, b, blind in zip(people.iterrows(), keyed["variant_a"], keyed["variant_b"], anony):
        try:
            name = language(v["language"]).name
        except CLOError:
            name = v["language"]
        out.append({
            "question_id": v["battle_id"], "model_a": a, "model_b": b, "winner": FASTCHAT_WINNER[v["outcome"]],
            "judge": f"arena_user_{v['voter']}",
            "conversation_a": [{"role": "user", "content": v["prompt"]}, {"role": "assistant", "content": v["answer_a"]}],
            "conversation_b": [{"role": "user", "content": v["prompt"]}, {"role": "assistant", "content": v["answer_b"]}],
            "turn": 1, "anony": bool(blind), "language": name, "language_code": v["language"],
            "tstamp": dt.datetime.fromisoformat(v["created_utc"]).timestamp(), "base_model": v.get("base_model")})
    return sorted(out, key=lambda r: r["tstamp"])


def export_votes(store: VoteStore, path: str | Path, fmt: str | None = None, language: str | None = None,
                 overwrite: bool = False, base: str | None = None) -> Path:
    """Write the votes as CSV, JSONL or Parquet (by `fmt` or the file's suffix); written whole or not at all.

    Never over the store itself (its file, -wal, -shm) or any SQLite database, and over another existing file
    only with `overwrite` (clo.files.check_output_file). CSV cells that would run as formulas are quoted
    (`spreadsheet_safe`). `base` keeps the votes on one base model (as clo.evaluate.ratings.of_base takes it);
    `fastchat` writes `fastchat_battles`, which needs one when the store holds several."""
    path = Path(path)
    fmt = export_format(path, fmt)
    check_output_file(path, overwrite, protected=[store.path] if store.path else ())
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(16) == b"SQLite format 3\x00":
                raise CLOError(f"--out {path} is an SQLite database (a vote store?), which an export never "
                               "writes over: choose another file")
    frame = store.votes(language)
    if base:
        from clo.evaluate.ratings import of_base

        frame = of_base(frame, base)
    if fmt == "fastchat":
        battles = fastchat_battles(frame)
    with atomic_path(path) as tmp:
        if fmt == "fastchat":
            Path(tmp).write_text(json.dumps(battles, ensure_ascii=False, indent=1), encoding="utf-8")
        elif fmt == "csv":
            spreadsheet_safe(frame).to_csv(tmp, index=False, lineterminator="\r\n")  # RFC 4180: a cell with a CR is quoted
        elif fmt == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path
