"""Export a distilled student as a standalone model folder: the adapter merged into its base, the tokenizer with its
chat template, a model card saying what made it, and the adapter itself beside it (for multi-adapter servers).
The card's facts are gathered from results tables by kd_bundle.report.student_card, which is also the
`python -m kd_bundle export` command.

The folder loads with `AutoModelForCausalLM.from_pretrained(folder)` alone (no peft, no kd-bundle). It is written
into a temporary folder beside `out` and renamed into place, so a crash leaves no half-written model; a non-empty
`out` is refused, never overwritten. `kd_export.json` holds the card's facts for programs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from kd_bundle.data.checks import DataError
from kd_bundle.student.model import StudentConfig, trained_base

log = logging.getLogger(__name__)

FACTS_FILE = "kd_export.json"  # in an exported folder: CardFacts, as JSON
ADAPTER_DIR = "adapter"  # in an exported folder: the peft adapter as trained
HUB_NAMES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # kd-bundle's shipped bases by their hub id
CARD_TAGS = ["kd-bundle", "bundle-generation", "knowledge-distillation", "lora", "merged"]


class ExportError(DataError):
    """An adapter, results table or output folder that cannot be exported from or to; the message says which."""


class CardFacts(BaseModel, frozen=True, extra="forbid"):
    """What made an exported student; every field may be unknown (None) and the card says so."""

    base_model: str | None = Field(None, description="The base the adapter was trained against (kd-bundle name/path).")
    merged_into: str | None = Field(None, description="'plain <dtype>' or 'NF4, dequantized' (the base it met).")
    domain: str | None = None
    knowledge_format: str | None = None
    utilization: str | None = None
    strategy: str | None = None
    ratio: float | None = None
    knowledge_quantity: dict[str, int | None] = Field(default_factory=dict, description="QUANTITY_COLUMNS of the row.")
    teacher: str | None = Field(None, description="The teacher model that distilled the knowledge.")
    data_sha256: str | None = Field(None, description="Hash of the source data files (the run manifest).")
    commit: str | None = Field(None, description="kd-bundle commit of the run that produced the results.")
    export_commit: str | None = Field(None, description="kd-bundle commit that exported the folder.")
    train_steps: int | None = None
    best_step: int | None = None
    train_examples: int | None = None
    train_seconds: float | None = None
    valid_loss: float | None = Field(None, description="Answer loss on the validation sessions at best_step.")
    test_sessions: int | None = None
    test_metrics: dict[str, float | None] = Field(
        default_factory=dict, description="metric, metric_lo, metric_hi (95% bootstrap over test sessions).")
    source: str | None = Field(None, description="The results table and row the metrics come from.")


def export_student(adapter_dir: Path, out_dir: Path, card_facts: CardFacts) -> Path:
    """Merge `adapter_dir` into its base and write the standalone folder `out_dir`; returns `out_dir`."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_adapter(adapter_dir)
    refuse_nonempty(out_dir)
    base = card_facts.base_model or adapter_base(adapter_dir)
    model, tokenizer, merged_into = merged_student(adapter_dir, base)
    facts = card_facts.model_copy(update={"base_model": base, "merged_into": merged_into})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.copytree(adapter_dir, staging / ADAPTER_DIR)
        (staging / FACTS_FILE).write_text(facts.model_dump_json(indent=1))
        (staging / "README.md").write_text(model_card(facts))
        refuse_nonempty(out_dir)  # it may have been filled while we merged
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (base %s, %s) to %s", adapter_dir, base, merged_into, out_dir)
    return out_dir


def check_adapter(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"{adapter_dir}: not a peft adapter folder (no adapter_config.json)")


def refuse_nonempty(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir}: exists and is not an empty folder; export writes a new folder, choose another")


def adapter_base(adapter_dir: Path) -> str:
    """The base named in the adapter: its student_config.json (kd-bundle's training), else peft's own record."""
    student_config = adapter_dir / "student_config.json"
    if student_config.is_file():
        return StudentConfig.model_validate_json(student_config.read_text()).model
    base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{adapter_dir}: the adapter names no base model "
                          "(adapter_config.json has no base_model_name_or_path)")
    return str(base)


def merged_student(adapter_dir: Path, base: str) -> tuple[Any, Any, str]:
    """(merged model, tokenizer, what it was merged into). An adapter trained on an NF4 base is merged into that
    base dequantized: the weights it was trained against, not the full-precision ones it never saw."""
    from peft import PeftModel

    from kd_bundle.student.model import load_base, load_tokenizer

    trained = trained_base(adapter_dir)
    cfg = StudentConfig(model=base, dtype=trained.get("dtype") or "float32")
    tokenizer = load_tokenizer(cfg)
    model, quantized = load_base(cfg, quantize=bool(trained.get("quantized")))
    if quantized:
        model = model.dequantize()
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")
    return merged.eval(), tokenizer, f"NF4, dequantized to {dtype}" if quantized else f"plain {dtype}"


def model_card(facts: CardFacts) -> str:
    """README.md with Hugging Face model-card front matter (base_model, library_name, tags) and the facts."""
    from huggingface_hub import ModelCard, ModelCardData

    base = facts.base_model or "unknown"
    data = ModelCardData(base_model=HUB_NAMES.get(base, base), library_name="transformers", tags=CARD_TAGS,
                         pipeline_tag="text-generation")

    def shown(value: Any) -> str:
        return "not recorded" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    quantity = ", ".join(f"{k} {shown(v)}" for k, v in facts.knowledge_quantity.items()) or "not recorded"
    lines = [
        "# kd-bundle distilled student", "",
        "A bundle-generation student distilled by kd-bundle from a teacher LLM: a LoRA "
        "adapter merged into its base. It loads with `AutoModelForCausalLM.from_pretrained` alone; the adapter as "
        f"trained is in `{ADAPTER_DIR}/` for multi-adapter serving.", "",
        "## What made it", "",
        f"- Base model: {base}{f' ({HUB_NAMES[base]})' if base in HUB_NAMES else ''} "
        f"(merged into: {shown(facts.merged_into)})",
        f"- Domain: {shown(facts.domain)}",
        f"- Knowledge format: {shown(facts.knowledge_format)}; utilization: {shown(facts.utilization)}; "
        f"sampling: {shown(facts.strategy)} at ratio {shown(facts.ratio)}",
        f"- Knowledge quantity: {quantity}",
        f"- Teacher: {shown(facts.teacher)}",
        f"- Data hash (sha256 of the source files): {shown(facts.data_sha256)}",
        f"- Training: {shown(facts.train_steps)} steps, best step {shown(facts.best_step)}, "
        f"{shown(facts.train_examples)} examples, {shown(facts.train_seconds)} s",
        f"- kd-bundle commit of the run: {shown(facts.commit)}; of the export: {shown(facts.export_commit)}",
        f"- Metrics from: {shown(facts.source)}", "",
        "## Validation and test metrics", "",
        f"Validation answer loss at the kept step: {shown(facts.valid_loss)}.", "",
        f"Test ({shown(facts.test_sessions)} sessions; 95% percentile-bootstrap intervals over sessions):", "",
        "| metric | value | 95% interval |", "|---|---|---|",
    ]
    metrics = [m for m in facts.test_metrics if not m.endswith(("_lo", "_hi"))]
    for m in metrics:
        lo, hi = facts.test_metrics.get(f"{m}_lo"), facts.test_metrics.get(f"{m}_hi")
        span = f"[{shown(lo)}, {shown(hi)}]" if lo is not None and hi is not None else "not computed"
        lines.append(f"| {m} | {shown(facts.test_metrics[m])} | {span} |")
    if not metrics:
        lines.append("| (no results row given) | | |")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))
