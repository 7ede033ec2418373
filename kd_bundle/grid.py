"""The study's grid: every (domain, research question, knowledge, sampling, utilization) cell, as data.

`expand(GridConfig) -> list[Cell]` is pure; the RQ flows and the full-grid flow loop over its cells. Cells share
work: `cells_by_knowledge` maps each knowledge artifact (domain, format, strategy, ratio) to the cells that read
it, and `cells_by_adapter` maps each fine-tuning set to the SFT cells that use it, so a flow computes each once.

    RQ1  knowledge format (raw, patterns, rules, thoughts) x utilization (icl, sft), full pools.
    RQ2  quantity: formats (all four by default) x utilizations x sampling strategies x ratios, plus per format
         and utilization multi-domain cells (one format's pools from several domains) and per utilization
         multi-format cells (several formats of the target domain aggregated), on full pools by default and at
         any `pooled_ratios` (each domain's and format's pool sampled alike with `pooled_strategy`).
    RQ3  utilization: icl (prompt knowledge), sft (training knowledge), sft+icl (both, chosen independently).

Labels in the results table (Cell.result_fields): `knowledge_format` is the format, "+"-joined for aggregation
("patterns+rules+thoughts"), and "train|prompt" when sft+icl uses two different formats ("rules|thoughts").
`strategy` is the sampling strategy, "all" for a full pool, or MULTI_DOMAIN / MULTI_FORMAT.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, field_validator, model_validator

from kd_bundle.config import DOMAINS, Domain

KnowledgeFormat = Literal["raw", "patterns", "rules", "thoughts"]
KNOWLEDGE_FORMATS: tuple[KnowledgeFormat, ...] = get_args(KnowledgeFormat)
Utilization = Literal["icl", "sft", "sft+icl"]
UTILIZATIONS: tuple[Utilization, ...] = get_args(Utilization)
SamplingStrategy = Literal["random", "length", "diversity", "difficulty"]
SAMPLING_STRATEGIES: tuple[SamplingStrategy, ...] = get_args(SamplingStrategy)
Strategy = Literal["all", "random", "length", "diversity", "difficulty"]  # "all": the full pool, no sampling
RQ = Literal["rq1", "rq2", "rq3"]
MULTI_DOMAIN = "multi-domain"  # results-table strategy label of an accumulation cell
MULTI_FORMAT = "multi-format"  # results-table strategy label of an aggregation cell
DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 11))


class _GridPart(BaseModel, frozen=True, extra="forbid"):
    @field_validator("*")
    @classmethod
    def _distinct(cls, value: Any) -> Any:
        if isinstance(value, tuple) and len(set(value)) != len(value):
            raise ValueError(f"entries must be distinct, got {value}")
        return value


class RQ1Grid(_GridPart, frozen=True):
    """RQ1: which knowledge format helps the student most?"""

    formats: tuple[KnowledgeFormat, ...] = Field(KNOWLEDGE_FORMATS, description="Knowledge formats compared.")
    utilizations: tuple[Literal["icl", "sft"], ...] = Field(("icl", "sft"), description="How the knowledge is used.")


class RQ2Grid(_GridPart, frozen=True):
    """RQ2: does more (or better chosen) distilled knowledge help?"""

    formats: tuple[KnowledgeFormat, ...] = Field(
        KNOWLEDGE_FORMATS, description="Formats whose quantity is varied; each adds strategies x ratios x utilizations cells."
    )
    utilizations: tuple[Literal["icl", "sft"], ...] = Field(
        ("icl", "sft"), description="The paper reports SFT peaking at some ratio, so both are swept."
    )
    strategies: tuple[SamplingStrategy, ...] = Field(SAMPLING_STRATEGIES, description="Sampling strategies swept.")
    ratios: tuple[float, ...] = Field(DEFAULT_RATIOS, description="Sampling ratios in (0, 1]; the study uses 0.1..1.0.")
    accumulate_domains: tuple[Domain, ...] = Field(
        DOMAINS, description="Domains pooled by the multi-domain cells; fewer than 2 means no multi-domain cells."
    )
    aggregate_formats: tuple[KnowledgeFormat, ...] = Field(
        ("patterns", "rules", "thoughts"),
        description="Formats joined by the multi-format cells; fewer than 2 means no multi-format cells.",
    )
    pooled_ratios: tuple[float, ...] = Field(
        (1.0,), description="Ratios of the multi-domain and multi-format cells; e.g. the `ratios` for a full sweep."
    )
    pooled_strategy: SamplingStrategy = Field("random", description="How pooled cells below ratio 1.0 sample each pool.")

    @field_validator("ratios", "pooled_ratios")
    @classmethod
    def _ratios_valid(cls, ratios: tuple[float, ...]) -> tuple[float, ...]:
        if not ratios or any(not 0 < r <= 1 for r in ratios) or len(set(ratios)) != len(ratios):
            raise ValueError(f"ratios must be distinct values in (0, 1], got {ratios}")
        return tuple(sorted(ratios))


class RQ3Grid(_GridPart, frozen=True):
    """RQ3: how should the student use the knowledge: in the prompt, in its weights, or both?"""

    utilizations: tuple[Utilization, ...] = Field(UTILIZATIONS, description="Utilization methods compared.")
    train_formats: tuple[KnowledgeFormat, ...] = Field(KNOWLEDGE_FORMATS, description="Knowledge SFT trains on.")
    prompt_formats: tuple[KnowledgeFormat, ...] = Field(KNOWLEDGE_FORMATS, description="Knowledge ICL retrieves.")


class GridConfig(_GridPart, frozen=True):
    """The study's grid; an RQ flow for one domain is GridConfig(domains=(domain,), rqs=("rq1",))."""

    domains: tuple[Domain, ...] = Field(DOMAINS, description="Target domains: whose test sessions are scored.")
    rqs: tuple[RQ, ...] = Field(("rq1", "rq2", "rq3"), description="Research questions expanded.")
    rq1: RQ1Grid = RQ1Grid()
    rq2: RQ2Grid = RQ2Grid()
    rq3: RQ3Grid = RQ3Grid()


class KnowledgeKey(BaseModel, frozen=True):
    """One knowledge artifact: a format mined or distilled from one domain's (sampled) training sessions."""

    domain: Domain
    knowledge_format: KnowledgeFormat
    strategy: Strategy
    ratio: float


class Cell(BaseModel, frozen=True):
    """One scored configuration of the grid."""

    domain: Domain = Field(description="Target domain: whose test sessions are scored.")
    rq: RQ
    knowledge_format: str = Field(description="Results label: a format, 'a+b' aggregated, 'train|prompt' for two.")
    train_format: str | None = Field(None, description="Knowledge the student is fine-tuned on ('+'-joined: several).")
    prompt_format: str | None = Field(None, description="Knowledge retrieved into the prompt ('+'-joined: several).")
    strategy: Strategy = "all"
    ratio: float = Field(1.0, gt=0, le=1)
    utilization: Utilization
    source_domains: tuple[Domain, ...] = Field(description="Domains whose training knowledge is used.")

    @model_validator(mode="after")
    def _consistent(self) -> "Cell":
        needs = {"icl": (False, True), "sft": (True, False), "sft+icl": (True, True)}[self.utilization]
        if (self.train_format is not None, self.prompt_format is not None) != needs:
            raise ValueError(f"Cell: {self.utilization} needs train_format/prompt_format set = {needs}")
        for label in (self.train_format, self.prompt_format):
            unknown = [f for f in formats_of(label) if f not in KNOWLEDGE_FORMATS]
            if unknown:
                raise ValueError(f"Cell: unknown knowledge format(s) {unknown}; expected {KNOWLEDGE_FORMATS}")
        if self.strategy == "all" and self.ratio != 1.0:
            raise ValueError(f"Cell: strategy 'all' means the full pool, but ratio is {self.ratio}")
        if not self.source_domains:
            raise ValueError("Cell: source_domains is empty")
        return self

    @property
    def name(self) -> str:
        """A short unique run name, e.g. 'food-rq2-sft-rules-random-0.3'."""
        labels = self.result_fields()
        knowledge, strategy = labels["knowledge_format"], labels["strategy"]
        return f"{self.domain}-{self.rq}-{self.utilization}-{knowledge}-{strategy}-{self.ratio:g}"

    def result_fields(self) -> dict[str, Any]:
        """The cell's columns of a results row (kd_bundle.evaluation.results.result_row)."""
        if len(self.source_domains) > 1:
            strategy = MULTI_DOMAIN
        elif "+" in self.knowledge_format:
            strategy = MULTI_FORMAT
        else:
            strategy = self.strategy
        return {
            "domain": self.domain,
            "rq": self.rq,
            "knowledge_format": self.knowledge_format,
            "strategy": strategy,
            "ratio": self.ratio,
            "utilization": self.utilization,
        }


def expand(cfg: GridConfig) -> list[Cell]:
    """Every cell of the grid, in a stable order: domain, then RQ, then that RQ's loops."""
    builders = {"rq1": _rq1_cells, "rq2": _rq2_cells, "rq3": _rq3_cells}
    return [cell for domain in cfg.domains for rq in cfg.rqs for cell in builders[rq](domain, cfg)]


def knowledge_keys(cell: Cell) -> tuple[KnowledgeKey, ...]:
    """The knowledge artifacts a cell reads (training and prompt knowledge), without repeats."""
    return tuple(dict.fromkeys(train_knowledge_keys(cell) + prompt_knowledge_keys(cell)))


def train_knowledge_keys(cell: Cell) -> tuple[KnowledgeKey, ...]:
    """The artifacts the SFT stage trains on: the adapter's identity (the target domain plays no part)."""
    return _keys(cell, cell.train_format)


def prompt_knowledge_keys(cell: Cell) -> tuple[KnowledgeKey, ...]:
    """The artifacts the ICL stage retrieves from."""
    return _keys(cell, cell.prompt_format)


def cells_by_knowledge(cells: list[Cell]) -> dict[KnowledgeKey, list[Cell]]:
    """Knowledge artifact -> the cells that read it, in first-use order: compute each key once."""
    groups: dict[KnowledgeKey, list[Cell]] = {}
    for cell in cells:
        for key in knowledge_keys(cell):
            groups.setdefault(key, []).append(cell)
    return groups


AdapterKey = tuple[tuple[KnowledgeKey, ...], tuple[KnowledgeKey, ...]]


def cells_by_adapter(cells: list[Cell], match_prompts: bool = True) -> dict[AdapterKey, list[Cell]]:
    """(training knowledge, prompt knowledge it was trained with) -> the cells that use that adapter; multi-domain
    cells share it across targets. With `match_prompts` (the pipeline's default sft_icl_prompts="match") an SFT+ICL
    cell's adapter is trained on prompts carrying its prompt knowledge, so that knowledge is part of its identity."""
    groups: dict[AdapterKey, list[Cell]] = {}
    for cell in cells:
        if cell.train_format is None:
            continue
        prompt = prompt_knowledge_keys(cell) if match_prompts and cell.utilization == "sft+icl" else ()
        groups.setdefault((train_knowledge_keys(cell), prompt), []).append(cell)
    return groups


def formats_of(label: str | None) -> tuple[str, ...]:
    """'patterns+rules' -> ('patterns', 'rules'); None -> ()."""
    return tuple(label.split("+")) if label else ()


def knowledge_label(train_format: str | None, prompt_format: str | None) -> str:
    """The results label of a cell's knowledge: one format, or 'train|prompt' when the two stages differ."""
    if train_format is None or prompt_format is None or train_format == prompt_format:
        return train_format or prompt_format or "none"
    return f"{train_format}|{prompt_format}"


def _keys(cell: Cell, label: str | None) -> tuple[KnowledgeKey, ...]:
    # A full sample is the full pool whatever the strategy, so it is one artifact.
    strategy, ratio = ("all", 1.0) if cell.ratio == 1.0 else (cell.strategy, cell.ratio)
    return tuple(
        KnowledgeKey(domain=domain, knowledge_format=fmt, strategy=strategy, ratio=ratio)
        for domain in cell.source_domains
        for fmt in formats_of(label)
    )


def _cell(domain: Domain, rq: RQ, utilization: Utilization, train: str | None, prompt: str | None, **kw: Any) -> Cell:
    return Cell(
        domain=domain,
        rq=rq,
        knowledge_format=knowledge_label(train, prompt),
        train_format=train,
        prompt_format=prompt,
        utilization=utilization,
        **{"source_domains": (domain,), **kw},
    )


def _single(domain: Domain, rq: RQ, utilization: Utilization, fmt: str, **kw: Any) -> Cell:
    """A cell using one knowledge label in the stage its utilization names (icl: prompt, sft: training)."""
    train = fmt if utilization != "icl" else None
    prompt = fmt if utilization != "sft" else None
    return _cell(domain, rq, utilization, train, prompt, **kw)


def _rq1_cells(domain: Domain, cfg: GridConfig) -> list[Cell]:
    return [_single(domain, "rq1", u, f) for f in cfg.rq1.formats for u in cfg.rq1.utilizations]


def _rq2_cells(domain: Domain, cfg: GridConfig) -> list[Cell]:
    grid = cfg.rq2
    cells = [
        _single(domain, "rq2", u, f, strategy=s, ratio=r)
        for f in grid.formats
        for u in grid.utilizations
        for s in grid.strategies
        for r in grid.ratios
    ]
    pooled = [{"strategy": "all", "ratio": 1.0} if r == 1.0 else {"strategy": grid.pooled_strategy, "ratio": r}
              for r in grid.pooled_ratios]
    if len(set(grid.accumulate_domains)) > 1:
        sources = tuple(dict.fromkeys(grid.accumulate_domains))
        cells += [_single(domain, "rq2", u, f, source_domains=sources, **p)
                  for p in pooled for f in grid.formats for u in grid.utilizations]
    if len(set(grid.aggregate_formats)) > 1:
        joined = "+".join(sorted(set(grid.aggregate_formats), key=KNOWLEDGE_FORMATS.index))
        cells += [_single(domain, "rq2", u, joined, **p) for p in pooled for u in grid.utilizations]
    return cells


def _rq3_cells(domain: Domain, cfg: GridConfig) -> list[Cell]:
    grid = cfg.rq3
    cells: list[Cell] = []
    for u in grid.utilizations:
        trains = grid.train_formats if u != "icl" else (None,)
        prompts = grid.prompt_formats if u != "sft" else (None,)
        cells += [_cell(domain, "rq3", u, t, p) for t in trains for p in prompts]
    return cells
