"""Constrained decoding: the student can only write an answer that parses, over its own session's products.

xgrammar (the structured-generation engine of vLLM and SGLang) compiles one EBNF grammar per session length and
masks the logits of every row, every step, inside `transformers.generate`. The answer is AICL's format after the
answer marker, `Bundles: {'bundle1': ['product1', 'product3'], 'bundle2': [...]}`:

- product numbers are 1..n of that session only, strictly increasing inside a bundle, so a bundle holds at least
  2 distinct products (an O(n^2) grammar, 45 alternatives at n = 10);
- 1..max_bundles bundles, keys numbered in order;
- optionally an intent per bundle, `{'products': [...], 'intent': '1 to 5 words'}` (kd_bundle.data.parsing reads it);
- optionally free reasoning first, `Reasoning: <one line>\\n`, bounded by a token cap: after `reasoning_tokens`
  tokens without a newline the row may only write a token that ends the line, and the answer follows.

A grammar depends only on (n, max_bundles, intents, reasoning), so it is compiled once per distinct session
length and reused. A row stops as soon as its grammar is complete (the closing brace), without an end-of-turn step;
in its last CLOSING_RESERVE tokens it may only close what it has opened, so the token cap rarely cuts an answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kd_bundle.student.icl import ANSWER_MARKER, REASONING_MARKER

log = logging.getLogger(__name__)

# Tokens before the cap at which a row starts closing its answer: the longest shortest completion, a bundle just
# opened (", 'bundle3': ['product9', 'product10']}", 40 characters), even spelled one character per token;
# twice that with intents. SmolLM2 spells it in ~14 tokens, so at the default caps this never binds a real answer.
CLOSING_RESERVE = 40


def answer_grammar(n_items: int, max_bundles: int, intents: bool = False, reasoning: bool = False) -> str:
    """EBNF (xgrammar dialect) of every answer allowed for a session of `n_items` products."""
    if n_items < 2:
        raise ValueError(f"answer_grammar: a session of {n_items} product(s) has no bundle of 2 distinct products")
    if max_bundles < 1:
        raise ValueError(f"answer_grammar: max_bundles is {max_bundles}; at least 1 bundle is needed")
    head = f'"{REASONING_MARKER} " thought "\\n" ' if reasoning else ""
    lines = [f'root ::= {head}"{ANSWER_MARKER} {{" bundle1 "}}"']
    for k in range(1, max_bundles + 1):
        more = f' (", " bundle{k + 1})?' if k < max_bundles else ""
        lines.append(f"bundle{k} ::= \"'bundle{k}': \" value{more}")
    if intents:
        lines.append("value ::= \"{'products': [\" items \"], 'intent': '\" intent \"'}\"")
        # 1-5 words (AICL asks for 3 to 5) of at most 12 letters, digits or &/.+-: bounded, 20x cheaper to compile
        # than a {1,60} character run, and never a quote, backslash or control character, so the literal parses.
        lines.append('intent ::= word (" " word){0,4}')
        lines.append("word ::= [a-zA-Z0-9&/.+-]{1,12}")
    else:
        lines.append('value ::= "[" items "]"')
    pairs = [f"\"'product{i}', 'product{j}'\"" + (f" after{j}" if j < n_items else "")
             for i in range(1, n_items) for j in range(i + 1, n_items + 1)]
    lines.append("items ::= " + " | ".join(pairs))
    for j in range(2, n_items):  # after{j}: optionally more products, each larger than the last
        options = [f"\", 'product{k}'\"" + (f" after{k}" if k < n_items else "") for k in range(j + 1, n_items + 1)]
        lines.append(f"after{j} ::= ({' | '.join(options)})?")
    if reasoning:
        lines.append("thought ::= [^\\n]+")
    return "\n".join(lines) + "\n"


def answer_allowed(text: str, n_items: int, max_bundles: int, intents: bool = False, reasoning: bool = False) -> bool:
    """Whether `text` is a whole answer the grammar admits (character level: any tokenizer spells it somehow).
    The token cap on reasoning is not part of the grammar; `reasoning_fits` checks it."""
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(_character_grammar(n_items, max_bundles, intents, reasoning))
    return bool(matcher.accept_string(text)) and matcher.is_completed()


def reasoning_fits(text: str, tokenizer: Any, reasoning_tokens: int) -> bool:
    """Whether the reasoning line of `text` (up to its newline) is within the student's cap, in its own tokens."""
    line = text.split("\n", 1)[0]
    return len(tokenizer(line, add_special_tokens=False)["input_ids"]) <= reasoning_tokens


_CHARACTER_GRAMMARS: dict[tuple[int, int, bool, bool], Any] = {}


def _character_grammar(n_items: int, max_bundles: int, intents: bool, reasoning: bool) -> Any:
    import xgrammar as xgr

    key = (n_items, max_bundles, intents, reasoning)
    if key not in _CHARACTER_GRAMMARS:
        compiler = xgr.GrammarCompiler(xgr.TokenizerInfo([]))  # no vocabulary: matched character by character
        _CHARACTER_GRAMMARS[key] = compiler.compile_grammar(answer_grammar(*key))
    return _CHARACTER_GRAMMARS[key]


@dataclass
class GrammarBook:
    """One tokenizer's compiler and its compiled answer grammars, keyed by (n, max_bundles, intents, reasoning)."""

    tokenizer_info: Any
    compiler: Any
    newline_ids: Any  # bool tensor over the vocabulary: tokens whose text holds a newline (they end the reasoning)
    opening_ids: Any  # bool tensor: tokens holding one of ",:[{ " (they open more answer); avoided when closing
    compiled: dict[tuple[int, int, bool, bool], Any] = field(default_factory=dict)

    @classmethod
    def for_model(cls, tokenizer: Any, vocab_size: int) -> GrammarBook:
        """`vocab_size` is the model's logits width, which may exceed the tokenizer's (padded embeddings)."""
        import torch
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        newline = torch.zeros(vocab_size, dtype=torch.bool)
        opening = torch.zeros(vocab_size, dtype=torch.bool)
        for token_id, text in enumerate(info.decoded_vocab):
            newline[token_id] = b"\n" in text
            opening[token_id] = any(char in text for char in b",:[{ ")
        return cls(info, xgr.GrammarCompiler(info), newline, opening)

    def grammar(self, n_items: int, max_bundles: int, intents: bool, reasoning: bool) -> Any:
        key = (n_items, max_bundles, intents, reasoning)
        if key not in self.compiled:
            self.compiled[key] = self.compiler.compile_grammar(answer_grammar(*key))
        return self.compiled[key]

    def constraint(
        self, grammars: list[Any], prefills: list[str], reasoning_tokens: int | None, max_new_tokens: int,
        intents: bool = False,
    ) -> RowConstraints:
        return RowConstraints(self, grammars, prefills, reasoning_tokens, max_new_tokens, intents)


_BOOKS: dict[tuple[int, int], GrammarBook] = {}


def grammar_book(tokenizer: Any, vocab_size: int) -> GrammarBook:
    """The GrammarBook of this tokenizer, built once per process (TokenizerInfo scans the whole vocabulary)."""
    key = (id(tokenizer), vocab_size)
    if key not in _BOOKS:
        _BOOKS[key] = GrammarBook.for_model(tokenizer, vocab_size)
    return _BOOKS[key]


class RowConstraints:
    """One batch's grammar state, one matcher per row, behind two faces (`processors()`): a logits processor (mask
    what the row's grammar forbids) and a stopping criterion (accept the new token; a row whose grammar is complete
    is done), so each token is accepted exactly once. Use a fresh one per `generate` call."""

    def __init__(
        self, book: GrammarBook, grammars: list[Any], prefills: list[str], reasoning_tokens: int | None,
        max_new_tokens: int, intents: bool = False,
    ):
        import xgrammar as xgr

        self.book = book
        self.matchers = [xgr.GrammarMatcher(g) for g in grammars]
        for row, (matcher, prefill) in enumerate(zip(self.matchers, prefills)):
            if prefill and not matcher.accept_string(prefill):
                raise ValueError(
                    f"row {row}: the prefill {prefill!r} is not the start of an answer the grammar allows; "
                    f"use '{ANSWER_MARKER}' (or '' for a reasoning student)"
                )
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), book.tokenizer_info.vocab_size)
        self.done = [False] * len(grammars)
        self.new_tokens = [0] * len(grammars)
        self.reasoning_tokens = reasoning_tokens
        # from this step on, a row closes what it has opened (all along, under a cap below the reserve)
        self.closing_from = max_new_tokens - CLOSING_RESERVE * (2 if intents else 1)
        self.reasoning_open = [reasoning_tokens is not None and "\n" not in p for p in prefills]

    def process_logits(self, input_ids: Any, scores: Any) -> Any:
        import torch
        import xgrammar as xgr

        for row, matcher in enumerate(self.matchers):
            if not self.done[row]:
                matcher.fill_next_token_bitmask(self.bitmask, row)
        masked = scores if scores.dtype == torch.float32 else scores.float()  # xgrammar's CPU kernel masks fp32
        xgr.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device))
        if any(not done and count >= self.closing_from for done, count in zip(self.done, self.new_tokens)):
            self._close(masked)
        if self.reasoning_tokens is not None:
            newline = self.book.newline_ids[: masked.shape[1]].to(masked.device)
            for row, open_ in enumerate(self.reasoning_open):
                capped = open_ and not self.done[row] and self.new_tokens[row] >= self.reasoning_tokens
                if capped and bool((newline & (masked[row] > float("-inf"))).any()):  # not inside "Reasoning: "
                    masked[row, ~newline] = float("-inf")
        return masked

    def _close(self, masked: Any) -> None:
        """Near the token cap, a row may not open anything new (no comma, colon, bracket or space): it finishes the
        product number or intent word it is in and closes the answer, instead of being cut off unparsable. Where
        every allowed token opens (a bundle of one product so far), the row goes on unrestricted."""
        opening = self.book.opening_ids[: masked.shape[1]].to(masked.device)
        for row, (done, count) in enumerate(zip(self.done, self.new_tokens)):
            if not done and count >= self.closing_from and bool(((masked[row] > float("-inf")) & ~opening).any()):
                masked[row, opening] = float("-inf")

    def stop_rows(self, input_ids: Any) -> Any:
        import torch

        for row, token in enumerate(input_ids[:, -1].tolist()):
            if self.done[row]:
                continue
            self.new_tokens[row] += 1
            matcher = self.matchers[row]
            if not matcher.accept_token(token):  # only a masked-in token can be sampled; say so if not
                log.warning("grammar: row %d sampled token %d its grammar forbids; the row stops", row, token)
                self.done[row] = True
                continue
            if self.reasoning_open[row] and bool(self.book.newline_ids[token]):
                self.reasoning_open[row] = False
            self.done[row] = matcher.is_completed() or matcher.is_terminated()
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def processors(self) -> tuple[LogitsMask, StopWhenComplete]:
        return LogitsMask(self), StopWhenComplete(self)


class LogitsMask:
    """The logits-processor face of RowConstraints."""

    def __init__(self, rows: RowConstraints):
        self.rows = rows

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        return self.rows.process_logits(input_ids, scores)


class StopWhenComplete:
    """The stopping-criterion face of RowConstraints: a row is done when its answer is complete."""

    def __init__(self, rows: RowConstraints):
        self.rows = rows

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return self.rows.stop_rows(input_ids)
