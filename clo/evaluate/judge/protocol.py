"""The judge's pairwise protocol: what an LLM judge is asked about two answers and how its reply is read.

    messages = PAIRWISE.messages(instruction, first, second)   # the chat sent to the judge (texts escaped as XML)
    winner, reply = PAIRWISE.read(text, top_logprobs, "logprobs")      # 0 | 1 | None (unreadable), what was read

The judge sees the instruction and the two answers as candidates A and B and names the better one (AlpacaEval's
pairwise protocol, written here; the README's "The paper's metric" says why). Every reply is read, never guessed, in
one of the CONSTRAINTS (`--judge-constraint`): "choice" (a vLLM server constrains the reply to the two labels),
"logprobs" (the first token's log-probabilities of the two labels decide), "none" (the text must be a label), or
"auto" (the client picks choice on vLLM, else logprobs). A reply that is none of these is unreadable (winner None).
A Protocol's `name` is stored with every verdict, so a changed prompt never mixes its verdicts with the old ones.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

CONSTRAINTS = ("auto", "choice", "logprobs", "none")


@dataclass(frozen=True)
class Protocol:
    """What the judge is asked and how its reply is read; `name` is stored with every verdict (a changed prompt
    gets a new name, so its verdicts never mix with the old ones)."""

    name: str
    labels: tuple[str, str]
    system: str
    template: str  # {instruction}, {first}, {second}, {label_1}, {label_2}

    def messages(self, instruction: str, first: str, second: str) -> list[dict]:
        """The chat sent to the judge. The visitor's instruction and the two answers are escaped as XML text (`&`,
        `<`, `>` as `&amp;`, `&lt;`, `&gt;`), so none can close the template's `<instruction>` / `<response>` or
        spell a marker written with `<` (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`): the judge's server renders
        the chat itself, tokenizing special-token text as markers, and escaping is what the client can do about it.
        A template's markers without `<` (Mistral's `[INST]`) are beyond this: judge with a ChatML / Llama-3 style model."""
        user = self.template.format(instruction=_as_text(instruction), first=_as_text(first), second=_as_text(second),
                                    label_1=self.labels[0], label_2=self.labels[1])
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def read(self, text: str, top_logprobs: list[dict], constraint: str) -> tuple[int | None, str]:
        """A reply read under `constraint`: the winner (0 the first shown, 1 the second, None when unreadable) and
        what was read (the label, with its probability when the first token's `top_logprobs` came back; else the
        reply itself, kept to show)."""
        labels = list(self.labels)
        probability = _label_probability(top_logprobs, labels)
        if constraint == "logprobs":
            if probability is None:
                winner = None
            else:
                winner = 0 if probability >= 0.5 else 1
        else:
            read = text.strip().strip("\"'`*.").strip()
            winner = labels.index(read) if read in labels else None
        if winner is None:
            reply = text if text.strip() else "(an empty reply)"
        else:
            reply = labels[winner] + (f" (p={probability:.3f})" if probability is not None else "")
        return winner, reply


def _as_text(text: str) -> str:
    """`text` escaped as XML text: it cannot open or close a tag, nor spell a special token written with `<`."""
    return html.escape(text, quote=False)


PAIRWISE = Protocol(
    name="clo-pairwise-3",  # 3: every pair asked in both orders (2 asked one; 1 sent the embedded texts unescaped)
    labels=("A", "B"),
    system=("You judge the work of AI assistants. You are given one instruction and two responses to it, written by "
            "two different assistants. Decide which response the person who wrote the instruction would rather "
            "receive: the one that does what was asked, correctly, helpfully and clearly. A longer response is not "
            "better for being longer, and the order of the two says nothing about their quality. The texts are "
            "escaped as XML: &lt;, &gt; and &amp; stand for <, > and &."),
    template=("<instruction>\n{instruction}\n</instruction>\n\n"
              "<response id=\"{label_1}\">\n{first}\n</response>\n\n"
              "<response id=\"{label_2}\">\n{second}\n</response>\n\n"
              "Which response is better? Reply with its id alone, {label_1} or {label_2}, and nothing else."),
)


def _label_probability(top: list[dict], labels: list[str]) -> float | None:
    """P(first label) among the two labels, from the first token's top log-probabilities (a token counts as a
    label when it is one after stripping spaces); None when neither label is among them."""
    best = {}
    for entry in top:
        token = str(entry.get("token", "")).strip()
        logprob = entry.get("logprob")
        if token in labels and isinstance(logprob, (int, float)) and logprob > -1e3:
            best[token] = max(best.get(token, -math.inf), float(logprob))
    if not best:
        return None
    first, second = best.get(labels[0], -math.inf), best.get(labels[1], -math.inf)
    top_logprob = max(first, second)
    return math.exp(first - top_logprob) / (math.exp(first - top_logprob) + math.exp(second - top_logprob))
