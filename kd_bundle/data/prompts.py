"""Prompt text shared by teacher and student: AICL's wording (notes/paper.md section 4), versioned.

Any edit to a shared template must bump PROMPT_VERSION: it is part of the cache key of every LLM stage. A template
only one stage sends (EXPLAIN_ERRORS_INSTRUCTION: rules) bumps that stage's own version instead.
"""

from __future__ import annotations

PROMPT_VERSION = "aicl-v2"  # v2: every answer shown or taught is in canonical form (canonical_positions)

BUNDLE_DEFINITION = (
    "A bundle can be a set of alternative or complementary products that are purchased with a certain intent."
)
ANSWER_FORMAT = "{'bundle number':['product number']}"
DETECT_INSTRUCTION = (
    BUNDLE_DEFINITION
    + " Please detect bundles from a sequence of products. Each bundle must contain multiple products."
    + " Here are the products and descriptions: {session}. The answer format is: "
    + ANSWER_FORMAT
    + ". No explanation for the results is needed."
)
INTENT_INSTRUCTION = (
    "Please use 3 to 5 words to generate intents behind the detected bundles, "
    "the output format is: {'bundle number':'intent'}."
)
ADJUST_INSTRUCTION = (
    "Given the generated intents, adjust the detected bundles with the product descriptions. "
    "The output format is: {'bundle number':'product number'}."
)
REGENERATE_INTENT_INSTRUCTION = (
    "Given the adjusted bundles, regenerate the intents behind each bundle, "
    "the output format is: {'bundle number':'intent'}."
)
EXPLAIN_ERRORS_INSTRUCTION = (
    "The correct bundles of this sequence are: {truth}. Compare them with the bundles you detected above and "
    "explain the causes of your errors: why did you group products that do not belong together, or miss products "
    "that do?"
)
RULES_QUESTION = "Based on conversations above, which rules do you find when detecting bundles?"
DETECT_WITH_KNOWLEDGE = (
    "Based on the knowledge above, detect bundles for the below product sequence:\n{session}\n, the answer format is: "
    + ANSWER_FORMAT
    + ". No explanation for the results."
)


def format_session(titles: list[str]) -> str:
    """AICL's rendering: `{'product1': 'title one', 'product2': ...}`, products numbered from 1 in session order."""
    return "{" + ", ".join(f"'product{i}': {_quote(title)}" for i, title in enumerate(titles, start=1)) + "}"


def format_bundles(positions: list[list[int]]) -> str:
    """The answer format of DETECT_INSTRUCTION for 1-based positions, e.g. `{'bundle1': ['product1', 'product3']}`."""
    return (
        "{"
        + ", ".join(
            f"'bundle{b}': [" + ", ".join(f"'product{p}'" for p in bundle) + "]"
            for b, bundle in enumerate(positions, start=1)
        )
        + "}"
    )


def demonstration_text(titles: list[str], positions: list[list[int]], reasoning: str | None = None) -> str:
    """One worked example: the products, optionally the reasoning (on one line), then the answer in AICL's format."""
    parts = [f"Products: {format_session(titles)}"]
    if reasoning and one_line(reasoning):
        parts.append(f"Reasoning: {one_line(reasoning)}")
    parts.append(f"Bundles: {format_bundles(positions)}")
    return "\n".join(parts)


def one_line(reasoning: str) -> str:
    """A thought as the student writes it: one line, whitespace runs (the teacher's "Step 1 / Step 2" line breaks
    included) collapsed to one space. The reasoning grammar is one line, ended by its newline, so that the answer
    marker can only follow it; a thought taught or shown with line breaks would be one the student may not write."""
    return " ".join(reasoning.split())


def format_intents(intents: list[str]) -> str:
    return "{" + ", ".join(f"'bundle{b}': {_quote(intent)}" for b, intent in enumerate(intents, start=1)) + "}"


def bundle_positions(bundles: list[list[str]], item_ids: list[str]) -> list[list[int]]:
    """Ground-truth bundles (item ids) as 1-based product numbers of their session, in canonical form.

    Every answer the student is trained on or shown (SFT targets, demonstrations, the answer after a thought, the
    teacher's demonstrations and rule-loop turns) comes from here, so it is always one the student's grammar allows
    (kd_bundle.student.grammar: strictly increasing product numbers inside a bundle)."""
    index = {item: position for position, item in enumerate(item_ids, start=1)}
    return canonical_positions([[index[item] for item in bundle] for bundle in bundles])


def canonical_positions(positions: list[list[int]]) -> list[list[int]]:
    """Product numbers ascending inside each bundle, bundles ordered by their first product.

    BundleRec lists most bundles' items in descending session order (1,186 of 1,346 Electronic bundles); the metrics
    treat bundles as sets, so sorting loses nothing and gives each answer one spelling the grammar accepts."""
    ascending = [sorted(set(bundle)) for bundle in positions]
    return sorted(ascending, key=lambda bundle: (bundle[0] if bundle else 0, bundle))


def _quote(text: str) -> str:
    return repr(str(text))
