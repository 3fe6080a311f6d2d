"""What the audience is served: per target language, the adapter in each slot and the variants the Arena draws.

Compare shows three slots, the base model, SFT and CLO; the Arena draws blind pairs from a list of variants.
Which adapter fills a slot is the speaker's choice, never a side effect of training: an adapter trained while
the app runs is loaded and listed, and it is served only once someone chooses it.

    lineup = Lineup("adapters/lineup.json", engine)
    lineup.slots("ko")          # {"base": "base", "sft": "sft-ko", "clo": "clo-ko"}
    lineup.arena("ko")          # ["base", "sft-ko", "clo-ko"]
    lineup.choose("ko", sft="sft-ko", clo="clo-ko-v2", arena=["base", "clo-ko", "clo-ko-v2"])   # saved

A language nobody has chosen for gets a default from the adapters present when the app started, so a plain
`python app.py` serves what was trained: per slot, the adapter named `{method}-{lang}` (the name training gives
by default), else the newest adapter of that method for the language. Choices are saved (atomically) in one
JSON file beside the adapters and hold across restarts.

The file is checked as the Serving panel's Apply checks a choice (`misfit`, one rule for both): a slot naming an
adapter that is not served (deleted, renamed), one trained for another language or by the other method gets one log
line naming the slot, the adapter and why, and serves that slot's default instead; the file itself is left as it is.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from clo import CLOError
from clo.engines.base import BASE, Adapter, Engine
from clo.files import atomic_write
from clo.languages import language

SLOTS = ("sft", "clo")  # the method each Compare slot shows, besides the base


class Lineup:
    def __init__(self, path: str | Path, engine: Engine, log=print):
        self.path, self.engine, self.log = Path(path), engine, log
        self.lock = threading.Lock()
        self.at_start = dict(engine.adapters)  # defaults come from these only: later adapters are never promoted
        self.chosen: dict[str, dict] = self._read()
        self.said: set[tuple] = set()  # the misfits already logged, each once
        for lang in self.chosen:  # say at start what the file names that cannot be served
            self.slots(lang)
            self.arena(lang)

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CLOError(f"{self.path}: not valid JSON ({e.msg}, line {e.lineno}); fix or delete it") from None
        if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
            raise CLOError(f"{self.path}: expected {{language: {{\"sft\": ..., \"clo\": ..., \"arena\": [...]}}}}")
        return raw

    # ---- reading ----
    def candidates(self, lang: str, method: str | None = None) -> list[str]:
        """Adapters served for `lang` (trained for it, or of unknown language), of `method` if given, by name."""
        return sorted(n for n, a in self.engine.adapters.items()
                      if a.target_lang in (lang, None) and (method is None or a.method == method))

    def _default(self, lang: str, method: str) -> str | None:
        served = self.engine.adapters
        mine = [a for n, a in self.at_start.items() if n in served and a.target_lang in (lang, None) and a.method == method]
        canonical = next((a.name for a in mine if a.name == f"{method}-{lang}"), None)
        if canonical or not mine:
            return canonical
        return max(mine, key=_trained_at).name

    def misfit(self, lang: str, slot: str, name: str) -> str | None:
        """Why adapter `name` cannot fill `slot` (a method: sft, clo; or "arena") for `lang`, or None when it can:
        the one check of a speaker's choice, whether it comes from the Serving panel or from the file."""
        if slot == "arena" and name == BASE:
            return None
        adapter = self.engine.adapters.get(name) if isinstance(name, str) else None
        if adapter is None:
            return "no adapter of that name is served (deleted or renamed?)"
        if adapter.target_lang not in (lang, None):
            return f"it was trained for {adapter.target_lang!r}, not {lang!r}"
        if slot != "arena" and adapter.method != slot:
            return f"its method is {adapter.method}, not {slot}"
        return None

    def _fitting(self, lang: str, slot: str, name: str) -> bool:
        """Whether the file's `name` may fill `slot`; a misfit is logged once, naming the slot, the adapter and why."""
        why = self.misfit(lang, slot, name)
        if why is not None and (lang, slot, repr(name), why) not in self.said:
            self.said.add((lang, slot, repr(name), why))
            where = "the Arena's list" if slot == "arena" else f"the {slot.upper()} slot"
            instead = ("it is left out" if slot == "arena"
                       else f"serving the default ({self._default(lang, slot) or 'empty'}) in its place")
            self.log(f"[clo] {self.path}: {where} for {lang!r} names {name!r}, which cannot be served there: {why}; "
                     f"{instead}")
        return why is None

    def slots(self, lang: str) -> dict[str, str | None]:
        """{"base": "base", "sft": name or None, "clo": name or None}: what Compare shows for `lang`; a chosen
        adapter that does not fit the slot (`misfit`) gives way to the slot's default."""
        choice = self.chosen.get(lang, {})
        out: dict[str, str | None] = {"base": BASE}
        for slot in SLOTS:
            name = choice[slot] if slot in choice else self._default(lang, slot)
            if slot in choice and name is not None and not self._fitting(lang, slot, name):
                name = self._default(lang, slot)
            out[slot] = name if name in self.engine.adapters else None
        return out

    def is_chosen(self, lang: str) -> bool:
        return lang in self.chosen

    def arena(self, lang: str) -> list[str]:
        """The variants the Arena draws pairs from for `lang`: the chosen list, else the filled slots."""
        chosen = self.chosen.get(lang, {}).get("arena")
        if chosen and isinstance(chosen, list):
            fits = [v for v in dict.fromkeys(map(str, chosen)) if self._fitting(lang, "arena", v)]
            if len(fits) >= 2:
                return fits
        return [v for v in self.slots(lang).values() if v]

    def languages(self) -> list[str]:
        """Languages with an adapter trained for them, or with a saved choice."""
        return sorted({a.target_lang for a in self.engine.adapters.values() if a.target_lang} | set(self.chosen))

    # ---- choosing ----
    def choose(self, lang: str, sft: str | None, clo: str | None, arena: list[str] | None = None) -> None:
        """Fill the slots of `lang` (None leaves a slot empty) and the Arena's list (None or [] = the slots); saved."""
        picked = {"sft": sft or None, "clo": clo or None}
        for slot, name in picked.items():
            why = None if name is None else self.misfit(lang, slot, name)
            if why is not None:
                fits = ", ".join(self.candidates(lang, slot)) or "none"
                raise CLOError(f"{name!r} cannot fill the {slot.upper()} slot for {lang!r}: {why} "
                               f"(those that fit: {fits})")
        arena = list(dict.fromkeys(arena or []))
        allowed = [BASE, *self.candidates(lang)]
        unknown = [v for v in arena if self.misfit(lang, "arena", v) is not None]
        if unknown:
            raise CLOError(f"the Arena cannot draw {', '.join(map(repr, unknown))} for {lang!r}; "
                           f"served for it: {', '.join(allowed)}")
        if len(arena) == 1:
            raise CLOError("the Arena needs at least two variants to draw a pair (or none, to follow the slots)")
        with self.lock:
            self.chosen = {**self.chosen, lang: {**picked, "arena": arena or None}}
            atomic_write(self.path, json.dumps(self.chosen, indent=2, ensure_ascii=False) + "\n")

    # ---- saying what is served ----
    def describe(self, lang: str, base_model: str) -> str:
        """One markdown line per slot: what it serves, which version, since when, and who chose it."""
        slots = self.slots(lang)
        how = "chosen by the speaker" if self.is_chosen(lang) else "default: as trained when the app started"
        parts = [f"**Base** `{base_model}`"]
        for slot in SLOTS:
            name = slots[slot]
            parts.append(f"**{slot.upper()}** " + (label(self.engine.adapters[name]) if name else "*(empty)*"))
        arena = ", ".join(f"`{v}`" for v in self.arena(lang)) or "*(needs two variants)*"
        try:
            name = language(lang).name  # a model's own language (clo.models.table) too
        except CLOError:
            name = lang
        return f"Serving for {name} ({how}): " + " · ".join(parts) + f"  \nArena draws from: {arena}"


def _trained_at(adapter: Adapter) -> float:
    """When the adapter was trained: its manifest's `created_utc` (written when training saved it, so a shipped
    adapter copied into place keeps its own date), else its weights' modification time."""
    import datetime as dt
    import json

    try:
        created = json.loads((adapter.path / "manifest.json").read_text(encoding="utf-8")).get("created_utc")
        return dt.datetime.fromisoformat(created).timestamp()
    except (OSError, ValueError, TypeError, AttributeError):  # no manifest, or no usable date in it
        weights = adapter.path / "adapter_model.safetensors"
        return weights.stat().st_mtime if weights.exists() else 0.0


def label(adapter: Adapter) -> str:
    """`clo-ko` #1a2b3c, trained 2026-11-22 14:03: the name, the version the votes record, and when."""
    import time

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(_trained_at(adapter)))
    return f"`{adapter.name}` #{adapter.sha256[:6]}, trained {when}"
