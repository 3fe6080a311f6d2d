"""Export the vote store's votes, people's and judges', to a file: CSV, JSONL or Parquet, by the file's suffix.

    export_votes(store, "votes.csv")                 # or votes.jsonl, votes.parquet; `python -m clo votes export`
    export_votes(store, "ko.parquet", language="ko", overwrite=True)

A file is written whole or not at all (clo.files.atomic_path), never over the store itself or any SQLite database;
CSV cells that a spreadsheet would run as formulas are quoted (`spreadsheet_safe`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clo import CLOError
from clo.files import atomic_path, check_output_file

if TYPE_CHECKING:
    from clo.evaluate.store import VoteStore

EXPORT_FORMATS = ("csv", "jsonl", "parquet")
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
    if fmt and suffix in EXPORT_FORMATS and suffix != fmt.lower():
        raise CLOError(f"--format {fmt} contradicts the file name {Path(path).name} (.{suffix}); "
                       f"name the file .{fmt.lower()} or drop --format")
    fmt = (fmt or suffix).lower()
    if fmt not in EXPORT_FORMATS:
        raise CLOError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    return fmt


def export_votes(store: VoteStore, path: str | Path, fmt: str | None = None, language: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write the votes as CSV, JSONL or Parquet (by `fmt` or the file's suffix); written whole or not at all.

    Never over the store itself (its file, -wal, -shm) or any SQLite database, and over another existing file
    only with `overwrite` (clo.files.check_output_file). CSV cells that would run as formulas are quoted
    (`spreadsheet_safe`)."""
    path = Path(path)
    fmt = export_format(path, fmt)
    check_output_file(path, overwrite, protected=[store.path] if store.path else ())
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(16) == b"SQLite format 3\x00":
                raise CLOError(f"--out {path} is an SQLite database (a vote store?), which an export never "
                               "writes over: choose another file")
    frame = store.votes(language)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            spreadsheet_safe(frame).to_csv(tmp, index=False, lineterminator="\r\n")  # RFC 4180: a cell with a CR is quoted
        elif fmt == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path
