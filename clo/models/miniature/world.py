"""The miniature world: English, an invented target language with an exact translation, and checkable tasks.

The paper's translation model becomes a function here, so data quality is not in question:
- the **lexicon** maps every English word to one invented word and back (a bijection; numbers and
  punctuation are shared, as digits are across many real languages);
- the target language is **head-final**: a clause that opens with a verb or a question word moves it to the
  clause's end ("reverse the words : cat dog" → "the' words' reverse' : cat' dog'"), as in Korean or Japanese.
  A clause is a run of words between punctuation marks.

Tasks have one right answer, written in either language, and a checker:
copy, reverse, count, first, last (word lists), add, subtract (numbers), color, home (a small fact table).

    from clo.models.miniature.world import WORLD, generate
    ex = generate(4, seed=0)[0]             # Example(task, prompt_en, response_en, prompt_tgt, response_tgt)
    WORLD.to_target(ex.prompt_en) == ex.prompt_tgt and WORLD.to_english(ex.prompt_tgt) == ex.prompt_en
    WORLD.language_of(ex.response_tgt)      # 'mini'
    check(ex, answer_text, "mini")          # exact answer in the query's language?
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

VERSION = 1  # bump when the generator changes in a way the fingerprint below cannot see
CODE = "mini"  # not an ISO 639 code on purpose: no real detector or translator knows this language
NAME = "Miniature (synthetic)"

ANIMAL_HOMES = {"cat": "house", "dog": "house", "bird": "tree", "fish": "river", "horse": "farm", "cow": "farm",
                "sheep": "field", "goat": "hill", "frog": "pond", "bee": "hive"}
COLORS = {"apple": "red", "rose": "red", "banana": "yellow", "lemon": "yellow", "leaf": "green", "grass": "green",
          "sky": "blue", "sea": "blue", "snow": "white", "milk": "white", "coal": "black", "night": "black"}
NOUNS = sorted(set(ANIMAL_HOMES) | set(COLORS))
NUMBERS = [str(n) for n in range(21)]
PUNCTUATION = [":", "?", ".", ","]

# Each task: the English templates of its query, and of its answer.
TEMPLATES = {
    "copy": (["repeat the words : {items}", "say again : {items}"], "you said : {items} ."),
    "reverse": (["reverse the words : {items}", "say backwards : {items}"], "the reverse is : {rev} ."),
    "count": (["how many words are in : {items} ?", "count the words : {items}"], "there are {n} words ."),
    "first": (["what is the first word of : {items} ?"], "the first word is {first} ."),
    "last": (["what is the last word of : {items} ?"], "the last word is {last} ."),
    "add": (["what is {a} plus {b} ?", "add {a} and {b} ."], "{a} plus {b} is {sum} ."),
    "subtract": (["what is {a} minus {b} ?"], "{a} minus {b} is {diff} ."),
    "color": (["what color is the {noun} ?", "say the color of the {noun} ."], "the {noun} is {color} ."),
    "home": (["where does the {animal} live ?"], "the {animal} lives in the {home} ."),
}
TASKS = tuple(TEMPLATES)
HEADS = {"repeat", "say", "reverse", "count", "what", "how", "where", "add"}  # move to the clause end in the target

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Lower-cased words, numbers and punctuation marks of `text`."""
    return _TOKEN.findall((text or "").lower())


def _english_words() -> list[str]:
    words = set(HEADS) | set(NOUNS) | set(COLORS.values()) | set(ANIMAL_HOMES.values())
    for queries, answer in TEMPLATES.values():
        for t in queries + [answer]:
            words.update(w for w in tokens(re.sub(r"\{\w+\}", " ", t)) if w.isalpha())
    return sorted(words)


def _invent(words: list[str], seed: int) -> dict[str, str]:
    """One pronounceable invented word per English word: two or three CV syllables, none an English word."""
    rng, taken, out = random.Random(seed), set(words), {}
    for w in words:
        while True:
            cand = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
            if cand not in taken:
                break
        taken.add(cand)
        out[w] = cand
    return out


@dataclass(frozen=True)
class Example:
    id: str
    task: str
    prompt_en: str
    response_en: str
    prompt_tgt: str
    response_tgt: str

    def row(self) -> dict:
        """The cross-lingual row `clo.train.run` trains on (plus the task, for the checkers)."""
        return {"id": self.id, "task": self.task, "prompt_en": self.prompt_en, "response_en": self.response_en,
                "prompt_tgt": self.prompt_tgt, "response_tgt": self.response_tgt}


class World:
    """The two languages: lexicon, word order, translation both ways, and word-level language identification."""

    def __init__(self, seed: int = 7):
        self.english = _english_words()
        self.lexicon = _invent(self.english, seed)  # English word -> target word
        self.inverse = {t: e for e, t in self.lexicon.items()}
        self.target_heads = {self.lexicon[h] for h in HEADS}

    @property
    def fingerprint(self) -> str:
        """Changes whenever the languages or tasks change (keys the cached base model)."""
        blob = repr((VERSION, sorted(self.lexicon.items()), sorted(HEADS), TEMPLATES, ANIMAL_HOMES, COLORS))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def vocabulary(self) -> list[str]:
        return self.english + sorted(self.inverse) + NUMBERS + PUNCTUATION

    @staticmethod
    def _clauses(toks: list[str]) -> list[list[str]]:
        """Split into runs of words and single punctuation marks, in order."""
        out: list[list[str]] = []
        for t in toks:
            if t in PUNCTUATION or not out or out[-1][0] in PUNCTUATION:
                out.append([t])
            else:
                out[-1].append(t)
        return out

    def _map(self, text: str, table: dict[str, str], heads: set[str], to_target: bool) -> str:
        out = []
        for clause in self._clauses(tokens(text)):
            if to_target and clause[0] in heads and len(clause) > 1:
                clause = clause[1:] + clause[:1]
            elif not to_target and clause[-1] in heads and len(clause) > 1:
                clause = clause[-1:] + clause[:-1]
            for w in clause:
                if w in PUNCTUATION or w.isdigit():
                    out.append(w)
                elif w in table:
                    out.append(table[w])
                else:
                    raise ValueError(f"{w!r} is not a word of the miniature's {'English' if to_target else 'target language'}")
        return " ".join(out)

    def to_target(self, english: str) -> str:
        """English → target language: word by word through the lexicon, heads moved to the clause end."""
        return self._map(english, self.lexicon, HEADS, to_target=True)

    def to_english(self, target: str) -> str:
        """Target language → English, the exact inverse of `to_target` on the miniature's sentences."""
        return self._map(target, self.inverse, self.target_heads, to_target=False)

    def language_of(self, text: str) -> str:
        """"en", "mini", "mixed" (words of both) or "unknown" (no word of either), from the words alone."""
        en = tgt = 0
        for w in tokens(text):
            en += w in self.lexicon
            tgt += w in self.inverse
        if en and tgt:
            return "mixed"
        return "en" if en else (CODE if tgt else "unknown")


WORLD = World()


def _instance(task: str, rng: random.Random) -> dict[str, str]:
    if task in ("copy", "reverse", "count", "first", "last"):
        items = rng.sample(NOUNS, rng.randint(2, 4))
        return {"items": " ".join(items), "rev": " ".join(reversed(items)), "n": str(len(items)),
                "first": items[0], "last": items[-1]}
    if task == "add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return {"a": str(a), "b": str(b), "sum": str(a + b)}
    if task == "subtract":
        a = rng.randint(0, 9)
        b = rng.randint(0, a)
        return {"a": str(a), "b": str(b), "diff": str(a - b)}
    if task == "color":
        noun = rng.choice(sorted(COLORS))
        return {"noun": noun, "color": COLORS[noun]}
    animal = rng.choice(sorted(ANIMAL_HOMES))
    return {"animal": animal, "home": ANIMAL_HOMES[animal]}


def held_out(task: str, slots: dict[str, str]) -> bool:
    """Whether an instance belongs to the evaluation side: facts about other entities, other sums, other lists.

    Fine-tuning pairs never come from this side, so evaluation asks about things the fine-tuning never showed
    (pretraining saw both sides, in English answers).
    """
    if task == "color":
        return slots["noun"] in sorted(COLORS)[::3]
    if task == "home":
        return slots["animal"] in sorted(ANIMAL_HOMES)[::3]
    if task in ("add", "subtract"):
        return (int(slots["a"]) + 2 * int(slots["b"])) % 4 == 0
    return int(hashlib.sha1(slots["items"].encode()).hexdigest(), 16) % 4 == 0


def example(task: str, rng: random.Random, split: str | None = None, world: World = WORLD) -> Example | None:
    """One random instance of `task` in both languages; None when it falls on the other side of `split`."""
    queries, answer = TEMPLATES[task]
    slots = _instance(task, rng)
    template = rng.choice(queries)
    if split is not None and held_out(task, slots) != (split == "eval"):
        return None
    prompt_en, response_en = template.format(**slots), answer.format(**slots)
    uid = hashlib.sha1(f"{task}|{prompt_en}".encode()).hexdigest()[:10]
    return Example(f"{task}-{uid}", task, prompt_en, response_en, world.to_target(prompt_en), world.to_target(response_en))


def generate(n: int, seed: int, split: str | None = None, tasks: tuple[str, ...] = TASKS, distinct: bool = True,
             world: World = WORLD) -> list[Example]:
    """`n` examples, tasks in turn, from `split` ("train", "eval" or None for both).

    With `distinct`, no English prompt repeats, and a task whose prompts run out (the fact tasks have a few
    dozen) is dropped from the turn. Deterministic: the same arguments give the same list in the same order.
    """
    if split not in (None, "train", "eval"):
        raise ValueError(f"unknown split {split!r}: use 'train', 'eval' or None")
    rng, out, seen = random.Random(seed), [], set()
    turn, misses = list(tasks), {t: 0 for t in tasks}
    i = 0
    while len(out) < n:
        if not turn:
            raise ValueError(f"only {len(out)} distinct examples of {', '.join(tasks)} exist in split {split!r}; ask for fewer")
        task = turn[i % len(turn)]
        ex = example(task, rng, split, world)
        if ex is None or (distinct and ex.prompt_en in seen):
            misses[task] += 1
            if misses[task] > 300:
                turn.remove(task)
            continue
        misses[task] = 0
        seen.add(ex.prompt_en)
        out.append(ex)
        i += 1
    return out


def _normal(text: str) -> list[str]:
    toks = tokens(text)
    while toks and toks[-1] in PUNCTUATION:
        toks.pop()
    return toks


def check(ex: Example, answer: str, lang: str) -> bool:
    """Is `answer` the right answer to `ex`'s query in `lang` ("en" or "mini"), in that language?

    Exact after normalisation: case, spacing and final punctuation do not matter; every word does.
    """
    expected = ex.response_en if lang == "en" else ex.response_tgt
    return _normal(answer) == _normal(expected)


def solved(ex: Example, answer: str) -> bool:
    """Is `answer` right in either language? (The base model answers target queries rightly, in English.)"""
    return check(ex, answer, "en") or check(ex, answer, CODE)
