"""Text normalisation, query ids and the query-quality filters (docs/PAPER.md section 1)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_URL = re.compile(r"https?://|www\.[a-z0-9-]+\.[a-z]", re.IGNORECASE)
# A Markdown table separator row (|---|:--:|) or an HTML table.
_TABLE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$|<table\b", re.M | re.I)
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Words, and the operators that tell "7 + 5" from "7 - 5" (a math problem is mostly its operators).
_WORD = re.compile(r"\w+|[+\-*/=<>^×÷]")
# Unicode categories that ordinary prose and mathematics do not use: controls, format characters,
# private use, unassigned and surrogates, plus symbols outside math (emoji and the like).
_UNUSUAL_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "So"})


def normalize(text: str) -> str:
    """The form used for exact dedup and ids: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def query_id(text: str) -> str:
    """Stable id of a question: 128 bits of sha256 over its normalised form."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()[:32]


def has_url(text: str) -> bool:
    return _URL.search(text) is not None


def has_table(text: str) -> bool:
    return _TABLE.search(text) is not None


def unusual_unicode_ratio(text: str) -> float:
    if not text:
        return 0.0
    if text.isascii():
        return len(_ASCII_CONTROL.findall(text)) / len(text)
    unusual = 0
    for ch in text:
        if ch in "\n\t\r":
            continue
        if unicodedata.category(ch) in _UNUSUAL_CATEGORIES:
            unusual += 1
    return unusual / len(text)


def words(normalized: str) -> list[str]:
    return _WORD.findall(normalized)


def split_response(text: str, prefill: str = "") -> tuple[str | None, str | None]:
    """(reasoning, final answer) of a response in the <think>...</think> answer format.

    The answer is what follows the reasoning, unwrapped from <answer> tags when present. A response
    without a closed think block has no reasoning; one that ends inside its reasoning has no answer.
    DeepSeek-R1 chat templates end the prompt with ``<think>\n`` (the prefill), so the completion holds
    only the closing tag: with no opening tag, everything before ``</think>`` is the reasoning.
    """
    text = prefill + text if prefill and not text.lstrip().startswith("<think>") else text
    # str.find, not a regular expression: a third of the time, once per imported response.
    opened = text.find("<think>")
    closed = text.find("</think>", opened + 7) if opened >= 0 else -1
    if closed >= 0:  # the first think block that closes
        return _answer_parts(text[opened + 7 : closed], text[closed + 8 :])
    if "</think>" in text:  # closed, never opened (the prefill opened it)
        head, rest = text.split("</think>", 1)
        return _answer_parts(head, rest)
    if opened >= 0:  # opened, never closed: cut off while reasoning
        return text[opened + 7 :].strip(), None
    return None, text.strip() or None


def _answer_parts(reasoning: str, rest: str) -> tuple[str | None, str | None]:
    opened = rest.find("<answer>")
    closed = rest.find("</answer>", opened + 8) if opened >= 0 else -1
    answer = (rest[opened + 8 : closed] if closed >= 0 else rest).strip()
    return reasoning.strip() or None, answer or None


_PREFILL = re.compile(r"<think>\s*$")


def think_prefill(prompt: str) -> str:
    """The part of a rendered prompt that opens the reasoning for the model (R1's ``<think>\n``)."""
    m = _PREFILL.search(prompt)
    return m.group(0) if m else ""
