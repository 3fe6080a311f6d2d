"""Batches of cross-lingual pairs: each pair's four query -> answer sequences tokenised, and a batch collated.

    features = tokenize_rows(data.rows, tokenizer, KEYS, max_length=512, max_prompt_length=256)
    batch = PairCollator(tokenizer.pad_token_id, KEYS)(features[:4])   # {key}_input_ids / _attention_mask / _labels

A sequence is the chat-formatted prompt plus its answer (clo.chat renders the template, the data's text is tokenised
as text); its labels are -100 on the prompt, so only the answer is scored. The keys (tgt_tgt, tgt_en, en_en, en_tgt)
are clo.train.objective's.
"""

from __future__ import annotations

import torch

from clo.chat import chat_pieces, piece_ids, remainder
from clo.train.objective import KEYS

QUERY_ANSWER = {"tgt_tgt": ("prompt_tgt", "response_tgt"), "tgt_en": ("prompt_tgt", "response_en"),
                "en_en": ("prompt_en", "response_en"), "en_tgt": ("prompt_en", "response_tgt")}  # key -> (query, answer) columns


def needed_keys(method: str, sft_english: bool = False) -> tuple[str, ...]:
    """The cross-lingual sequences a method evaluates under π_θ."""
    if method == "sft":
        return ("tgt_tgt", "en_en") if sft_english else ("tgt_tgt",)
    return KEYS


def encode(tokenizer, prompt: str, response: str, max_length: int, max_prompt_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the chat-formatted prompt + answer, and labels that are -100 on the prompt.

    A prompt over max_prompt_length tokens keeps its end; the answer keeps its start, up to max_length in all."""
    return _cut(*_encode_uncut(tokenizer, prompt, response), max_length, max_prompt_length)


def _encode_uncut(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat-formatted prompt (generation prompt included) and of the answer (end of turn included).

    The data's text is tokenized as text, so only the template makes turn markers (clo.chat)."""
    messages = [{"role": "user", "content": prompt}]
    prompt_pieces = chat_pieces(tokenizer, messages, add_generation_prompt=True)
    full = chat_pieces(tokenizer, messages + [{"role": "assistant", "content": response}])
    answer = remainder(full, "".join(text for text, _ in prompt_pieces))
    if answer is None:  # a template whose full chat does not begin with its prompt
        answer = [(response, True), (tokenizer.eos_token, False)]
    return piece_ids(tokenizer, prompt_pieces), piece_ids(tokenizer, answer)


def _cut(prompt_ids: list[int], answer_ids: list[int], max_length: int, max_prompt_length: int) -> tuple[list[int], list[int]]:
    prompt_ids = prompt_ids[-max_prompt_length:]
    answer_ids = answer_ids[: max_length - len(prompt_ids)]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def tokenize_rows(rows: list[dict], tokenizer, keys, max_length: int, max_prompt_length: int,
                  overlong: str = "cut") -> list[dict]:
    """One feature per pair: {key}_input_ids and {key}_labels for each cross-lingual sequence in `keys`, and
    `cut`: whether any of them was longer than the limits. overlong = "cut" shortens such a pair (see `encode`);
    "drop" leaves it out, so len(result) may be below len(rows)."""
    features = []
    for row in rows:
        feature, cut = {"id": row["id"]}, False
        for key in keys:
            q, a = QUERY_ANSWER[key]
            prompt_ids, answer_ids = _encode_uncut(tokenizer, row[q], row[a])
            cut = cut or len(prompt_ids) > max_prompt_length or len(prompt_ids) + len(answer_ids) > max_length
            feature[f"{key}_input_ids"], feature[f"{key}_labels"] = _cut(prompt_ids, answer_ids, max_length, max_prompt_length)
        if cut and overlong == "drop":
            continue
        features.append(feature | {"cut": cut})
    return features


class PairCollator:
    """Right-pads each sequence group of a batch separately; carries precomputed reference log-probs."""

    def __init__(self, pad_token_id: int, keys):
        self.pad_token_id, self.keys = pad_token_id, keys

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in self.keys:
            ids = [f[f"{key}_input_ids"] for f in features]
            width = max(map(len, ids))
            batch[f"{key}_input_ids"] = torch.tensor([x + [self.pad_token_id] * (width - len(x)) for x in ids])
            batch[f"{key}_attention_mask"] = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            batch[f"{key}_labels"] = torch.tensor([f[f"{key}_labels"] + [-100] * (width - len(f[f"{key}_labels"])) for f in features])
            if f"ref_{key}" in features[0]:
                batch[f"ref_{key}"] = torch.tensor([f[f"ref_{key}"] for f in features], dtype=torch.float32)
        return batch
