"""Typed, frozen configuration for every stage, plus the environment settings.

One model per stage, so that a stage's cache key moves only when its own block changes
(changing `student.learning_rate` never re-mines patterns). Frozen pydantic models hash
stably through JSON, which is what Prefect's INPUTS cache policy relies on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, StringConstraints, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A domain is a label: one of the shipped domains, or the name of your own data (a folder's name or --domain-name).
# It goes into file names, task-run names and every table, hence the narrow alphabet.
DOMAIN_LABEL = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Domain = Annotated[str, StringConstraints(pattern=DOMAIN_LABEL)]
ShippedDomain = Literal["electronic", "clothing", "food"]  # under ../shared/data/<domain>/; a dropdown in the UI form
DOMAINS: tuple[ShippedDomain, ...] = ("electronic", "clothing", "food")
Split = Literal["train", "test", "valid"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Where things live and how to reach the teacher. Read from KD_* environment variables.

    The API key is a SecretStr: it never prints, and it is never passed to a task or a flow,
    so it can be part of neither a cache key nor a Prefect parameter.
    """

    model_config = SettingsConfigDict(env_prefix="KD_", extra="ignore")

    data_root: Path = Field(_REPO_ROOT.parent / "shared" / "data", description="Folder with one sub-folder per domain.")
    store: Path = Field(_REPO_ROOT / ".kd-cache" / "store", description="Root of the content-addressed artifact store.")
    results_dir: Path = Field(_REPO_ROOT / "results", description="Where flows publish their results tables.")
    teacher_base_url: str = Field("http://127.0.0.1:8765/v1", description="Any OpenAI-compatible endpoint.")
    teacher_api_key: SecretStr = Field(SecretStr("local"), description="From KD_TEACHER_API_KEY only.")


def reject_unknown_keys(model: type[BaseModel], data: Any, where: str) -> None:
    """Raise on a key that no field of `model` (or of a nested config model) takes: a misspelt parameter.

    For models whose own config cannot forbid extras; pydantic would drop such a key without a word.
    """
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    unknown = sorted(set(data) - set(fields) - {f.alias for f in fields.values() if f.alias})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    for name, field in fields.items():
        if name in data and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            reject_unknown_keys(field.annotation, data[name], f"{where}.{name}")


def domain_label(data_dir: str | Path, name: str | None = None) -> str:
    """The label of your own data: `name`, or the folder's name, lower-cased with other characters as '-'."""
    raw = name if name is not None else Path(data_dir).resolve().name
    label = re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-_")[:64]
    if not re.fullmatch(DOMAIN_LABEL, label):
        raise ValueError(f"cannot make a domain label of {raw!r} (data folder {data_dir}): give --domain-name, "
                         "e.g. my-shop (lower-case letters, digits, '-' and '_')")
    if name is None and label in DOMAINS:
        raise ValueError(f"your data folder {data_dir} is named like the shipped domain {label!r}: give "
                         "--domain-name (domain_name) so its rows cannot be mistaken for the study's")
    return label


def settings() -> Settings:
    """Fresh settings each call, so a changed environment (tests, CLI flags) is honoured."""
    return Settings()


class DataConfig(BaseModel, frozen=True, extra="forbid"):
    """Which sessions a run sees. The slice bounds keep CPU runs short; None means all."""

    domain: Domain = Field("electronic", description="Dataset domain: a shipped one, or the label of `custom_dir`.")
    custom_dir: str | None = Field(
        None, description="A folder with your own items/bundles tables (docs/data.md: schema); replaces the domain's "
        "data, and `domain` is then its label. Not part of any cache key: the tables' bytes are."
    )
    max_train_sessions: int | None = Field(None, ge=1, description="Keep the first N training sessions (None = all).")
    max_test_sessions: int | None = Field(
        None, ge=1, description="Keep N test sessions, stratified by length like the AICL split (None = all 180)."
    )
    split_seed: int = Field(0, description="Seed for the stratified test slice.")

    @model_validator(mode="after")
    def _known_source(self) -> "DataConfig":
        if self.custom_dir is None and self.domain not in DOMAINS:
            raise ValueError(f"domain {self.domain!r} is not a shipped domain {DOMAINS}: give your data folder "
                             "(--data DIR, or the flow parameter data_dir)")
        return self


class PatternConfig(BaseModel, frozen=True, extra="forbid"):
    """Apriori over the leaf categories of training bundles (notes/paper.md section 3)."""

    min_support: float = Field(0.001, gt=0, le=1, description="SIGIR'22 grid search chose 0.001 for all domains.")
    min_confidence: float = Field(0.001, gt=0, le=1, description="SIGIR'22 value; efficient-apriori uses standard confidence.")
    min_size: int = Field(2, ge=2, le=5, description="Smallest itemset kept; a bundle has at least 2 items.")
    max_size: int = Field(5, ge=2, le=10, description="SIGIR'22 mined pattern sizes 2..5.")
    max_lines: int = Field(20, ge=1, description="Knowledge lines rendered into one prompt.")

    @model_validator(mode="after")
    def _sizes_ordered(self) -> "PatternConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"PatternConfig: min_size {self.min_size} > max_size {self.max_size}")
        return self


class BaselineConfig(BaseModel, frozen=True, extra="forbid"):
    """Non-LLM bundlers. `pattern` = SIGIR'22 detection over mined itemsets; `category` = group by leaf category;
    the positional references read no title: `first-two` / `last-two` products as one bundle, `whole-session`."""

    method: Literal["pattern", "category", "first-two", "last-two", "whole-session"] = "pattern"
    categories: Literal["inferred", "given"] = Field(
        "inferred", description="inferred: from titles, leak-free; given: dataset categories, known only for bundled items."
    )
