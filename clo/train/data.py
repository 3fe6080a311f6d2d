"""Cross-lingual training pairs: English SFT data, its translation, and the CLO rows built from both.

Sources of English pairs (x_en, y_en): the shipped sample (`assets/sample/pairs.jsonl`), a local
JSONL / JSON / CSV file with configurable field names, a Hugging Face dataset id (for
OpenAssistant/oasst1, the paper's selection: English first turns with their top-ranked answer), or a named
source an offline model brings, already in its own language (`named_sources()`: clo.models.table's DATA_SOURCES).
Translations (x_l, y_l) come from the file itself or from a translation model (M2M100, NLLB),
batched, cached on disk by content hash so nothing is translated twice.

    from clo.config import DataConfig
    from clo.train.data import build_pairs
    data = build_pairs(DataConfig(target_lang="ko", pairs=50))
    print(data.preview(3))

or `python -m clo prepare --lang ko --pairs 50`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from clo import CLOError
from clo.config import DataConfig
from clo.models.table import SAMPLE
from clo.files import atomic_write, read_text
from clo.hub import explain_missing, locate
from clo.languages import language

DEFAULT_TRANSLATORS = {"m2m100": "facebook/m2m100_418M", "nllb": "facebook/nllb-200-distilled-600M"}
OASST_COLUMNS = {"message_id", "parent_id", "role", "text", "rank", "lang"}
FORMAT_VERSION = 1  # bump when the built rows change shape, so old caches are not reused


@dataclass
class CrossLingualData:
    """The rows a run trains on, one per pair: id, prompt_en, response_en, prompt_tgt, response_tgt."""

    rows: list[dict]
    manifest: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def preview(self, n: int = 3, width: int = 60) -> str:
        """A plain-text table: for each query the chosen (✓) and the rejected (✗) answer."""
        lang = self.manifest.get("target_lang", "tgt")

        def cut(text: str) -> str:
            text = " ".join(text.split())
            return text if len(text) <= width else text[: width - 1] + "…"

        lines = []
        for row in self.rows[:n]:
            lines += [
                f"[{row['id']}]",
                f"  x_{lang}: {cut(row['prompt_tgt'])}",
                f"    ✓ y_{lang}: {cut(row['response_tgt'])}",
                f"    ✗ y_en: {cut(row['response_en'])}",
                f"  x_en: {cut(row['prompt_en'])}",
                f"    ✓ y_en: {cut(row['response_en'])}",
                f"    ✗ y_{lang}: {cut(row['response_tgt'])}",
            ]
        return "\n".join(lines)


# ---- reading English pairs ----

MAX_FIELD_CHARS = 100_000  # longest text field a data file may hold: ~25k tokens, far past any max_length; a
                           # longer one is a mistake (a whole document pasted into a cell) and is refused at load time
_JSON_KINDS = {"list": "an array", "dict": "an object", "int": "a number", "float": "a number", "str": "a string",
               "bool": "true/false", "NoneType": "null"}


def read_records(path: Path) -> Iterable[tuple[str, dict]]:
    """(where, record) for each record of a .jsonl, .json or .csv file; `where` is 'file, line N'."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv"):
        raise CLOError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .csv")
    text = read_text(path, "data file")  # one decoder for data files and recipes (clo.files)
    if not text.strip():
        raise CLOError(f"{path}: no usable rows (the file is empty)")
    if suffix in (".jsonl", ".ndjson"):
        for i, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may stand inside a JSON string
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CLOError(f"{path}, line {i}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise CLOError(f"{path}, line {i}: expected a JSON object {{...}}, got {_json_kind(record)}")
            yield f"{path}, line {i}", record
    elif suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLOError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            raise CLOError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}}), got {_json_kind(records)}")
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise CLOError(f"{path}, item {i}: expected a JSON object {{...}}, got {_json_kind(record)}")
            yield f"{path}, item {i}", record
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            for record in reader:
                if None in record:  # values past the header's last column: a comma in an unquoted field, most often
                    raise CLOError(f"{path}, line {reader.line_num}: {len(reader.fieldnames) + len(record[None])} values for "
                                   f"{len(reader.fieldnames)} columns; put a field holding a comma in double quotes")
                yield f"{path}, line {reader.line_num}", record
        except csv.Error as e:  # raised before line_num counts the line it is reading
            if "field limit" in str(e):
                raise CLOError(f"{path}, line {reader.line_num + 1}: a field is longer than {csv.field_size_limit():,} characters, "
                               f"over the limit of {MAX_FIELD_CHARS:,}; shorten or remove this row") from None
            raise CLOError(f"{path}, line {reader.line_num + 1}: not valid CSV ({e})") from None


def _json_kind(value) -> str:
    return _JSON_KINDS.get(type(value).__name__, type(value).__name__)


def _text(record: dict, key: str, where: str) -> str:
    if key not in record:
        found = ", ".join(repr(k) for k in record) or "no fields at all"
        raise CLOError(f"{where}: field {key!r} is missing; this row has {found} "
                       "(name yours with --data.prompt_field / --data.response_field)")
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise CLOError(f"{where}: field {key!r} is {_json_kind(value)}, not text")
    if value is None or not value.strip():
        raise CLOError(f"{where}: field {key!r} is missing or empty")
    if len(value) > MAX_FIELD_CHARS:
        raise CLOError(f"{where}: field {key!r} has {len(value):,} characters, over the limit of {MAX_FIELD_CHARS:,} "
                       "(training cuts every pair to training.max_length tokens anyway); shorten or remove this row")
    return value.strip()


def load_english(cfg: DataConfig) -> tuple[list[dict], dict]:
    """English pairs as rows {id, prompt_en, response_en[, prompt_tgt, response_tgt]} and a source description.

    Rows carry the target-language fields only when the file has them (translations already made).
    """
    lang = language(cfg.target_lang).code  # KO, kor, ko-KR → ko: the file's fields are prompt_ko, response_ko
    tgt_prompt = cfg.target_prompt_field.replace("{lang}", lang)
    tgt_response = cfg.target_response_field.replace("{lang}", lang)
    named = named_sources().get(cfg.source)
    if named is not None:
        if lang != named.language:
            raise CLOError(f"--data {named.name} is in {language(named.language).name} only: use --lang "
                           f"{named.language}, not {cfg.target_lang!r}")
        return named.load(cfg)
    if cfg.source == "sample":
        path = SAMPLE
    elif Path(cfg.source).expanduser().is_file() or Path(cfg.source).suffix.lower() in (".jsonl", ".json", ".csv", ".ndjson"):
        path = Path(cfg.source).expanduser()
        if not path.is_file():
            raise CLOError(f"data file {path} does not exist")
    else:
        return _load_hub(cfg, tgt_prompt, tgt_response)

    rows = []
    for where, record in read_records(path):
        row = {
            "id": str(record["id"]) if record.get("id") not in (None, "") else where.rsplit(" ", 1)[-1],
            "prompt_en": _text(record, cfg.prompt_field, where),
            "response_en": _text(record, cfg.response_field, where),
        }
        has = [k for k in (tgt_prompt, tgt_response) if record.get(k) not in (None, "")]
        if len(has) == 1:
            missing = tgt_response if has[0] == tgt_prompt else tgt_prompt
            raise CLOError(f"{where}: has {has[0]!r} but no {missing!r}; a translation must cover both query and answer")
        if has:
            row["prompt_tgt"] = _text(record, tgt_prompt, where)
            row["response_tgt"] = _text(record, tgt_response, where)
        row["where"] = where
        rows.append(row)
    if not rows:
        raise CLOError(f"{path}: no usable rows")
    source = {"source": "sample" if path == SAMPLE else str(path), "sha256": _file_hash(path)}
    return rows, source


def named_sources() -> dict:
    """The named sources the offline models bring (`--data NAME` -> clo.models.table.DataSource), besides 'sample'."""
    from clo.models.table import DATA_SOURCES

    return dict(DATA_SOURCES)


def _load_hub(cfg: DataConfig, tgt_prompt: str, tgt_response: str) -> tuple[list[dict], dict]:
    import datasets

    source = locate(cfg.source, kind="dataset", flag="--data")
    offline = datasets.config.HF_HUB_OFFLINE
    try:
        with explain_missing(source):
            # hub down: the local cache or a clear error at once, not a minute of retries
            datasets.config.HF_HUB_OFFLINE = offline or source.local_files_only
            ds = datasets.load_dataset(source.name, split=cfg.split)
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
    where = f"dataset {cfg.source} ({cfg.split})"
    if OASST_COLUMNS <= set(ds.column_names):
        rows = select_oasst_pairs(ds)
    else:
        for key in (cfg.prompt_field, cfg.response_field):
            if key not in ds.column_names:
                raise CLOError(f"{where}: no column {key!r}; it has {', '.join(ds.column_names)} (set --data.prompt_field / --data.response_field)")
        rows = []
        for i, record in enumerate(ds):
            prompt, response = record.get(cfg.prompt_field), record.get(cfg.response_field)
            if isinstance(prompt, str) and prompt.strip() and isinstance(response, str) and response.strip():
                row = {"id": str(record.get("id", i)), "prompt_en": prompt.strip(), "response_en": response.strip()}
                if record.get(tgt_prompt) and record.get(tgt_response):
                    row["prompt_tgt"], row["response_tgt"] = record[tgt_prompt].strip(), record[tgt_response].strip()
                rows.append(row)
    if not rows:
        raise CLOError(f"{where}: no usable rows")
    for row in rows:
        row["where"] = f"{where}, row {row['id']}"
        for key in ("prompt_en", "response_en", "prompt_tgt", "response_tgt"):
            if key in row:
                _text(row, key, row["where"])  # the length limit, as for a file
    return rows, {"source": cfg.source, "split": cfg.split, "fingerprint": getattr(ds, "_fingerprint", None)}


def select_oasst_pairs(messages: Iterable[dict]) -> list[dict]:
    """The paper's oasst1 selection: English first turns, each with its top-ranked (rank 0) assistant reply.

    `messages` are oasst1 message rows (message_id, parent_id, role, text, rank, lang, ...).
    Deleted messages and replies whose review failed are skipped.
    """
    prompts, best = {}, {}
    for m in messages:
        if m.get("deleted") or m.get("review_result") is False:
            continue
        if m["role"] == "prompter" and m["parent_id"] is None and m["lang"] == "en":
            prompts[m["message_id"]] = m["text"]
        elif m["role"] == "assistant" and m.get("rank") == 0:
            best[m["parent_id"]] = m["text"]
    return [
        {"id": mid, "prompt_en": text.strip(), "response_en": best[mid].strip()}
        for mid, text in prompts.items()
        if mid in best and text.strip() and best[mid].strip()
    ]


# ---- translation ----

class Translator(Protocol):
    model_id: str

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]: ...


class HFTranslator:
    """M2M100 or NLLB through transformers: batched, line by line, greedy; codes from clo.languages."""

    def __init__(self, family: str, model_id: str | None = None, batch_size: int = 16, device: str | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if family not in DEFAULT_TRANSLATORS:
            raise CLOError(f"unknown translator {family!r}; choose m2m100 or nllb")
        self.family, self.model_id, self.batch_size = family, model_id or DEFAULT_TRANSLATORS[family], batch_size
        source = locate(self.model_id, kind="translation model", flag="--data.translator_model")
        with explain_missing(source):
            kw = {"local_files_only": source.local_files_only}
            self.tokenizer = AutoTokenizer.from_pretrained(source.name, **kw)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(source.name, use_safetensors=True, **kw)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()

    def _code(self, lang: str) -> str:
        entry = language(lang)
        code = entry.m2m100 if self.family == "m2m100" else entry.nllb
        if code is None:
            named = [s.name for s in named_sources().values() if s.language == entry.code]
            raise CLOError(f"no translation model knows {entry.name} ({lang!r})"
                           + (f"; its pairs come from --data {' or --data '.join(named)}" if named else
                              "; give data that has its translations (--data.translator file)"))
        return code

    def _target_token_id(self, lang: str) -> int:
        code = self._code(lang)
        token = f"__{code}__" if self.family == "m2m100" else code
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise CLOError(f"translation model {self.model_id} does not know language {lang!r} (token {token})")
        return token_id

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        forced = self._target_token_id(tgt)
        self.tokenizer.src_lang = self._code(src)
        out = []
        for start in tqdm(range(0, len(texts), self.batch_size), desc=f"translate {src}→{tgt}", unit="batch"):
            batch = texts[start : start + self.batch_size]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=512).to(self.device)
            with torch.no_grad():
                gen = self.model.generate(**enc, forced_bos_token_id=forced, max_new_tokens=512, num_beams=1, do_sample=False)
            out += [t.strip() for t in self.tokenizer.batch_decode(gen, skip_special_tokens=True)]
        return out


class KeyValueCache:
    """An SQLite table of sha256 keys → values, read and written in bulk: what a translation or a log-probability
    costs to compute once. Subclasses name the table, the value's column and SQL type, and what enters the key
    (an existing cache file keeps working: the names are those it was created with)."""

    table, column, value_type = "", "value", "TEXT"

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (key TEXT PRIMARY KEY, {self.column} {self.value_type} NOT NULL)")

    @staticmethod
    def digest(*parts) -> str:
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def get(self, keys: list[str]) -> dict:
        found = {}
        for i in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[i : i + 500]
            q = f"SELECT key, {self.column} FROM {self.table} WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(self.db.execute(q, chunk).fetchall())
        return found

    def put(self, items: dict) -> None:
        with self.db:
            self.db.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?, ?)", items.items())

    def close(self) -> None:
        self.db.close()


class TranslationCache(KeyValueCache):
    """sha256(model, src, tgt, text) → translation."""

    table, column = "translations", "text"

    @staticmethod
    def key(model_id: str, src: str, tgt: str, text: str) -> str:
        return KeyValueCache.digest(model_id, src, tgt, text)


def translate_cached(translator: Translator, texts: list[str], src: str, tgt: str, cache: TranslationCache) -> list[str]:
    """Translate texts line by line (keeping the layout), asking the model only for lines not in the cache."""
    lines = sorted({line.strip() for text in texts for line in text.split("\n") if line.strip()})
    keys = {line: cache.key(translator.model_id, src, tgt, line) for line in lines}
    known = cache.get(list(keys.values()))
    todo = [line for line in lines if keys[line] not in known]
    if todo:
        done = translator.translate(todo, src, tgt)
        if len(done) != len(todo):
            raise CLOError(f"translator {translator.model_id} returned {len(done)} texts for {len(todo)}")
        fresh = {keys[line]: text for line, text in zip(todo, done)}
        cache.put(fresh)
        known.update(fresh)
    return ["\n".join(known[keys[l.strip()]] if l.strip() else l for l in text.split("\n")) for text in texts]


# ---- building the cross-lingual rows ----

def build_pairs(cfg: DataConfig, translator_factory: Callable[[DataConfig], Translator] | None = None) -> CrossLingualData:
    """Select `cfg.pairs` English pairs (seeded), translate them if needed, and cache the result.

    The result is cached under cache_dir/datasets/ by a hash of everything that determines it.
    """
    lang = language(cfg.target_lang).code
    rows, source = load_english(cfg)
    read, rows = len(rows), _dedupe(rows)
    have_tgt = [r for r in rows if "prompt_tgt" in r]
    translator = cfg.translator
    if translator == "auto":
        translator = "file" if have_tgt else "m2m100"
    if translator == "file":
        if not have_tgt:
            raise CLOError(
                f"{source['source']}: no translations into {lang!r} in the data "
                f"(fields {cfg.target_prompt_field.replace('{lang}', lang)!r}, {cfg.target_response_field.replace('{lang}', lang)!r}); "
                "use --data.translator m2m100 or nllb"
            )
        missing = [r for r in rows if "prompt_tgt" not in r]
        if missing:
            raise CLOError(f"{missing[0]['where']}: no translation into {lang!r}, while other rows have one")
    if len(rows) < cfg.pairs:
        why = f" ({read} rows, of which {read - len(rows)} repeat an earlier row's prompt and answer and were dropped)" if read > len(rows) else ""
        raise CLOError(f"{source['source']}: asked for {cfg.pairs} pairs but only {len(rows)} usable rows exist{why}; lower --pairs")

    rng = random.Random(cfg.seed)
    chosen = sorted(rng.sample(range(len(rows)), cfg.pairs))
    rows = [rows[i] for i in chosen]
    model_id = None if translator == "file" else (cfg.translator_model or DEFAULT_TRANSLATORS[translator])
    key = _hash(
        {"v": FORMAT_VERSION, "source": source, "lang": lang, "translator": translator, "model": model_id,
         "rows": [[r["id"], r["prompt_en"], r["response_en"], r.get("prompt_tgt"), r.get("response_tgt")] for r in rows]}
    )
    cached = Path(cfg.cache_dir) / "datasets" / f"{lang}-{key[:16]}.jsonl"
    if cached.is_file() and cached.with_suffix(".manifest.json").is_file():
        return _read_cached(cached)

    if translator != "file":
        factory = translator_factory or (lambda c: HFTranslator(translator, c.translator_model, c.translation_batch_size))
        engine = factory(cfg)
        cache = TranslationCache(Path(cfg.cache_dir) / "translations.sqlite")
        prompts = translate_cached(engine, [r["prompt_en"] for r in rows], "en", lang, cache)
        responses = translate_cached(engine, [r["response_en"] for r in rows], "en", lang, cache)
        for row, p, a in zip(rows, prompts, responses):
            if not p.strip() or not a.strip():
                raise CLOError(f"{row['where']}: the translation into {lang!r} came back empty")
            row["prompt_tgt"], row["response_tgt"] = p, a

    out = [{k: r[k] for k in ("id", "prompt_en", "response_en", "prompt_tgt", "response_tgt")} for r in rows]
    manifest = {
        **source,
        "target_lang": lang,
        "pairs": len(out),
        "seed": cfg.seed,
        "translator": translator,
        "translator_model": model_id,
        "rows_sha256": _hash(out),
        "cache_file": str(cached),
    }
    atomic_write(cached.with_suffix(".manifest.json"), json.dumps(manifest, indent=2, ensure_ascii=False))
    atomic_write(cached, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return CrossLingualData(out, manifest)


def _read_cached(path: Path) -> CrossLingualData:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    manifest = json.loads(path.with_suffix(".manifest.json").read_text(encoding="utf-8"))
    return CrossLingualData(rows, manifest)


def _dedupe(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for row in rows:
        k = (row["prompt_en"], row["response_en"])
        if k not in seen:
            seen.add(k)
            out.append(row)
    return out


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

