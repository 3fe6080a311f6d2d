"""Battles whose identities leak: an answer that names a variant, or a prompt that asks who the model is.

A blind vote is blind only if nothing in the battle tells the voter who answered. FastChat drops such votes from its
ratings; here they are flagged when the battle is made (`leak`, stored with the battle and its vote: schema 9),
counted on the Leaderboard and left out of every rating (clo.evaluate.ratings.rated_battles).

    leak("Who are you?", ["I am SmolLM.", "Mimi ni msaidizi."], ["base", "sft-sw", "clo-sw"], "models/smollm2-135m-instruct")
    # -> "the prompt asks who the model is"
    leak("4 + 5?", ["As the CLO adapter, 9.", "9"], ["base", "clo-sw"], None)   # -> "an answer says 'CLO'"

What counts as naming: a variant's name as a whole word, any case (`clo-sw`, `SFT-SW`; "base" is an ordinary word,
so it is not one); the method words SFT and CLO in capitals; the base model's name (the last part of its path or
hub id) and its family (Llama, Qwen, SmolLM… as FAMILIES lists them, any case, not followed by a letter: "SmolLM2"
and "Qwen2.5" name one, "llamas" does not).
"""

from __future__ import annotations

import re
from typing import Iterable

# model families whose name in an answer gives the base away (lowercase; matched at the start of a word)
FAMILIES = ("llama", "qwen", "mistral", "mixtral", "gemma", "phi", "smollm", "olmo", "falcon", "bloom", "gpt",
            "chatgpt", "deepseek", "yi", "internlm", "baichuan", "aya", "exaone", "sealion", "sailor")
METHODS = ("SFT", "CLO", "DPO", "ORPO")  # the method words, in capitals as the paper and the app write them
# a prompt that asks the model who it is (English, and the app's target languages' plainest forms)
ASKS_WHO = re.compile(
    r"\bwho\s+(are|r)\s+(you|u)\b|\bwhat\s+(are|r)\s+you\b|\bwhich\s+(model|ai|llm)\b|\byour\s+(name|model|creator|maker)\b"
    r"|\bwho\s+(made|created|built|trained|developed)\s+you\b|\bwhat\s+(model|ai|llm|language\s+model)\s+(are|is)\b"
    r"|\bare\s+you\s+(an?\s+)?(chatgpt|gpt|gemini|claude|llama|qwen|smollm|ai|bot|model)\b"
    r"|너는?\s*누구|당신은\s*누구|누가\s*(너를|당신을)\s*만들|你是谁|你是什么模型|谁(开发|训练|创造)了你"
    r"|wewe\s+ni\s+nani|jina\s+lako|wer\s+bist\s+du|welches\s+modell|siapa\s+(kamu|anda)",
    re.IGNORECASE)


def base_names(base: str | None) -> list[str]:
    """What would name the base model in an answer: the last part of its path or hub id, and its family."""
    if not base:
        return []
    last = re.split(r"[\\/]", str(base).rstrip("/\\"))[-1].lower()
    return [last] + [f for f in FAMILIES if re.search(rf"(?<![a-z]){f}", last)]


def leak(prompt: str, answers: Iterable[str], variants: Iterable[str], base: str | None) -> str | None:
    """Why this battle is not blind (one short phrase, stored with it), or None: the prompt asks who the model is, or
    an answer names one of `variants` (the variants in play), a method, or the base model `base` (its name or path)."""
    if ASKS_WHO.search(prompt or ""):
        return "the prompt asks who the model is"
    names = sorted({v for v in variants if v and v.lower() != "base"}, key=len, reverse=True)
    for text in answers:
        text = text or ""
        for name in names:
            if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE):
                return f"an answer names the variant {name!r}"
        for word in METHODS:
            if re.search(rf"(?<![\w-]){word}(?![\w-])", text):
                return f"an answer says {word!r}"
        for name in base_names(base):  # "SmolLM2", "Qwen2.5", "Llama-3", not "llamas" or "philosophy"
            if re.search(rf"(?<![\w-]){re.escape(name)}(?![a-z])", text, re.IGNORECASE):
                return f"an answer names the base model ({name})"
    return None
