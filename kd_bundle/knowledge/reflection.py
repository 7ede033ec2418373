"""AICL's self-reflection conversation on one training session (notes/paper.md section 4), the input of rule summary.

Steps, each switchable in rules.RuleConfig, all in one chat so the teacher sees its whole history:

1. initial detection (AICL's init prompt);
2. self-correction, 3 turns: intents, bundles adjusted with them, intents regenerated; it stops after the adjust
   turn when the adjusted bundles repeat the initial ones (AICL's early stop);
3. auto-feedback: up to `feedback_rounds` turns of AICL's typed tips (findErrors codes) until every bundle is right;
4. error explanation: the true bundles are shown and the teacher explains the causes of its errors (the KD paper's
   "analyses the discrepancies and their causes"); asked only when some answer was wrong.

The teacher's FIRST answer is scored too (strict precision, error codes): it is the difficulty of the session for
the teacher, which difficulty sampling uses (kd_bundle.knowledge.pools.teacher_difficulty).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kd_bundle.data.parsing import ParsedBundles, parse_bundles
from kd_bundle.data.prompts import (
    ADJUST_INSTRUCTION,
    DETECT_INSTRUCTION,
    EXPLAIN_ERRORS_INSTRUCTION,
    INTENT_INSTRUCTION,
    REGENERATE_INTENT_INSTRUCTION,
    bundle_positions,
    format_bundles,
    format_session,
)
from kd_bundle.teacher import TeacherClient
from kd_bundle.teacher.answer_schema import detection_format

# AICL's findErrors codes -> the tip the teacher reads.
ERROR_TIPS = {
    0: "correct and should be remained",
    1: "invalid and should be removed",
    2: "containing some irrelevant products that should be removed",
    3: "missing some products and should append other related products from the sequence",
    4: "containing only one product and should contain at least 2 related products",
}
UNREADABLE_TIP = (
    "Your answer could not be read as bundles of the listed products (only product1 to product{n} exist). "
    "Please output the bundles with the format: {{'bundle number':['product number']}}."
)
FEEDBACK_TEMPLATE = (
    "Here are some tips for the detected bundles in your answer: {tips}. Adjust the bundles based on the tips in "
    "your answer. Please output the adjusted bundles with the format: {{'bundle number':'product number'}}."
)
CORRECT, HALLUCINATED = 0, 5
BUNDLE_STEPS = ("detect", "adjust", "feedback")


@dataclass
class Reflection:
    """What one session's conversation produced, before the rule summary turn."""

    conversation: list[dict[str, str]]
    first: ParsedBundles
    first_codes: list[int]
    first_precision: float
    readable: ParsedBundles  # the last answer that could be read as bundles (the first one when none could)
    feedback_rounds: int = 0
    parse_failures: int = 0
    self_corrected: bool = False  # the adjust turn changed the bundles
    steps: list[str] = field(default_factory=list)  # labels of the user turns, in order
    request_keys: list[str] = field(default_factory=list)  # one per teacher answer: its usage in the request cache
    truncated: int = 0  # answers cut at max_tokens (kept in the chat so it goes on, but never read as bundles)


def reflect(session: dict[str, Any], cfg: Any, client: TeacherClient) -> Reflection:
    """Run steps 1-4 on one training session (`cfg`: rules.RuleConfig)."""
    n_items = len(session["item_ids"])
    truth = bundle_positions(session["bundles"], session["item_ids"])
    conversation: list[dict[str, str]] = []
    steps: list[str] = []
    keys: list[str] = []
    cut: list[str] = []

    def ask(step: str, prompt: str) -> str:
        steps.append(step)
        conversation.append({"role": "user", "content": prompt})
        # Bundle turns ask the endpoint for the session's answer schema; intents and explanations are free text.
        answer_format = detection_format(n_items) if step in BUNDLE_STEPS else None
        completion = client.complete_or_cut(list(conversation), response_format=answer_format)
        if completion.truncated:  # a cut answer stays in the chat but is a failed turn, never bundles
            cut.append(step)
        keys.append(completion.request_key)
        conversation.append({"role": "assistant", "content": completion.text})
        return "" if completion.truncated else completion.text

    first_text = ask("detect", detect_prompt(session["titles"]))
    first = parse_bundles(first_text, n_items)
    first_codes = type_errors(first, truth)
    out = Reflection(conversation, first, first_codes, strict_precision(first, truth), first, steps=steps,
                     parse_failures=int(first.bundles is None), request_keys=keys)
    parsed, latest_text = first, first_text

    if cfg.self_correction:
        ask("intents", INTENT_INSTRUCTION)
        adjusted_text = ask("adjust", ADJUST_INSTRUCTION)
        adjusted = parse_bundles(adjusted_text, n_items)
        out.parse_failures += adjusted.bundles is None
        if not _repeats(adjusted, adjusted_text, parsed, latest_text):
            out.self_corrected = True
            ask("regenerate-intents", REGENERATE_INTENT_INSTRUCTION)
        parsed, latest_text = adjusted, adjusted_text
        out.readable = adjusted if adjusted.bundles is not None else out.readable

    codes = type_errors(parsed, truth)
    for _ in range(cfg.feedback_rounds):
        missing = _missing(out.readable, truth) if cfg.missing_tip and parsed.bundles is not None else 0
        if parsed.bundles and all(c == CORRECT for c in codes) and missing == 0:
            break
        parsed = parse_bundles(ask("feedback", feedback_prompt(codes, n_items, missing)), n_items)
        out.feedback_rounds += 1
        out.parse_failures += parsed.bundles is None
        out.readable = parsed if parsed.bundles is not None else out.readable
        codes = type_errors(parsed, truth)

    wrong_at_all = any(c != CORRECT for c in first_codes + codes) or _missing(first, truth) > 0
    if cfg.explain_errors and wrong_at_all:
        ask("explain", EXPLAIN_ERRORS_INSTRUCTION.replace("{truth}", format_bundles(truth)))
    out.truncated = len(cut)
    return out


def detect_prompt(titles: list[str]) -> str:
    """The rule loop's first request: AICL's detection instruction over the session's products."""
    return DETECT_INSTRUCTION.replace("{session}", format_session(titles))


def first_answer(session: dict[str, Any], client: TeacherClient) -> tuple[float, list[int]]:
    """The rule loop's first turn alone, scored: (strict precision, error codes) of the teacher's first detection.
    The request is the very one `reflect` sends first, so a session the rule loop distilled costs no new call
    (the request cache answers it)."""
    n_items = len(session["item_ids"])
    truth = bundle_positions(session["bundles"], session["item_ids"])
    completion = client.complete_or_cut([{"role": "user", "content": detect_prompt(session["titles"])}],
                                        response_format=detection_format(n_items))
    parsed = parse_bundles("" if completion.truncated else completion.text, n_items)
    return strict_precision(parsed, truth), type_errors(parsed, truth)


def type_errors(parsed: ParsedBundles, truth: list[list[int]]) -> list[int]:
    """AICL's error code per generated bundle against the ground truth (1-based product numbers).

    The reference bundle is the ground-truth bundle of maximum Jaccard. 0: identical; 1: disjoint; 2: not a subset
    (irrelevant products); 3: strict subset of 2+ products (missing products); 4: one product. An unreadable
    answer or a hallucinated product number (the parser rejects those) is [5].
    """
    if parsed.bundles is None:
        return [HALLUCINATED]
    codes = []
    for bundle in parsed.bundles:
        generated = set(bundle)
        best = max(truth, key=lambda t: jaccard(generated, set(t)), default=[])
        similarity = jaccard(generated, set(best))
        if similarity == 1:
            codes.append(0)
        elif similarity == 0:
            codes.append(1)
        elif not generated <= set(best):
            codes.append(2)
        else:
            codes.append(3 if len(generated) >= 2 else 4)
    return codes


def strict_precision(parsed: ParsedBundles, truth: list[list[int]]) -> float:
    """kd_bundle.evaluation.metrics' strict precision of one answer: bundles of 2+ products inside some true bundle, over
    those bundles; 0 for an unreadable answer or one without such a bundle."""
    kept = [set(b) for b in parsed.bundles or [] if len(set(b)) >= 2]
    if not kept:
        return 0.0
    return sum(any(b <= set(t) for t in truth) for b in kept) / len(kept)


def feedback_prompt(codes: list[int], n_items: int, missing: int = 0) -> str:
    """The feedback turn for `codes` (one per generated bundle, or [5] for an unreadable answer)."""
    if codes == [HALLUCINATED] or not codes:
        return UNREADABLE_TIP.format(n=n_items)
    tips = []
    for code, tip in ERROR_TIPS.items():
        names = [f"bundle{i}" for i, c in enumerate(codes, start=1) if c == code]
        if names:
            verb = "is" if len(names) == 1 else "are"
            tips.append(f"{' and '.join(names)} {verb} {tip}")
    if missing > 0:
        tips.append(f"{missing} bundle(s) in the sequence {'is' if missing == 1 else 'are'} not detected yet")
    return FEEDBACK_TEMPLATE.format(tips="; ".join(tips))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _repeats(adjusted: ParsedBundles, adjusted_text: str, initial: ParsedBundles, initial_text: str) -> bool:
    """AICL's early stop: the adjusted bundles are the initial ones (as sets; raw text when either is unreadable)."""
    if adjusted.bundles is None or initial.bundles is None:
        return adjusted_text.strip() == initial_text.strip()
    return sorted(map(sorted, adjusted.bundles)) == sorted(map(sorted, initial.bundles))


def _missing(parsed: ParsedBundles, truth: list[list[int]]) -> int:
    """Ground-truth bundles that no generated bundle matches exactly."""
    found = {frozenset(b) for b in parsed.bundles or []}
    return sum(frozenset(t) not in found for t in truth)
