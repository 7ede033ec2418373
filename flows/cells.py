"""Wiring shared by the research flows: grid cells -> knowledge -> retrieval -> adapter -> predictions -> scores.

`Plan` asks for each artifact once per flow run (a memo keyed like kd_bundle.grid.KnowledgeKey), and Prefect's
content cache makes a second run, or another flow needing the same artifact, reuse it. No data is touched here.
"""

from __future__ import annotations

import sys
from typing import Callable

from prefect.context import FlowRunContext

from flows.pipeline import PipelineConfig, full_pool
from kd_bundle import grid
from kd_bundle.config import BaselineConfig, DataConfig, settings
from kd_bundle.evaluation.baselines import BASELINE_METHODS, baseline_label
from kd_bundle.evaluation.results import CellLabels
from kd_bundle.knowledge.sampling import SamplingConfig
from kd_bundle.store import ArtifactRef
from kd_bundle.student.icl import ICLConfig
from kd_bundle.student.training import SFTConfig
from tasks.common import resolved, submitted_stages
from tasks.data import load_sessions
from tasks.evaluation import collect_results, predict_baseline, publish_results, score_predictions, teacher_predict
from tasks.knowledge import (
    combine_domains,
    distill_rules,
    distill_thoughts,
    first_answer_difficulty,
    mine_patterns,
    pattern_difficulty,
    pool_training,
    sample_training,
    select_knowledge,
    teacher_difficulty,
)
from tasks.report import publish_report
from tasks.student import embed_sessions, index_sessions, retrieve_knowledge, student_predict, train_adapter


class Plan:
    """Each artifact requested once: sessions, indexes, knowledge pools, retrievals, adapters, per flow run."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg, self._memo = cfg, {}

    def _once(self, key: tuple, make: Callable[[], ArtifactRef]) -> ArtifactRef:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def sessions(self, domain: str) -> ArtifactRef:
        data = DataConfig(domain=domain, custom_dir=self.cfg.data_dirs.get(domain),
                          max_train_sessions=self.cfg.max_train_sessions, max_test_sessions=self.cfg.max_test_sessions)
        return self._once(("sessions", domain), lambda: load_sessions(data, settings().data_root))

    def pooled_sessions(self, domain: str | None, sources: tuple[str, ...], strategy: str = "all",
                        ratio: float = 1.0) -> ArtifactRef:
        """The target's sessions plus the other source domains' training sessions (ids made disjoint): what retrieval
        queries and indexes. domain None: the sources' (sampled) training sessions only, the same for every target
        (multi-domain SFT trains on it)."""
        if domain is None:
            return self.pool(None, sources, "raw", strategy, ratio)
        others = [self.sessions(d) for d in sources if d != domain]
        if not others:
            return self.sessions(domain)
        return self._once(("pooled", domain, sources), lambda: combine_domains(self.sessions(domain), others))

    def embeddings(self, domain: str | None, sources: tuple[str, ...]) -> tuple[ArtifactRef, ArtifactRef]:
        pooled = self.pooled_sessions(domain, sources)
        vectors = self._once(("embeddings", domain, sources), lambda: embed_sessions(pooled, self.cfg.retrieval))
        return vectors, self._once(("index", domain, sources), lambda: index_sessions(pooled, vectors))

    def sampled_sessions(self, domain: str, strategy: str, ratio: float) -> ArtifactRef:
        return self._sample(("sampled", domain), self.sessions(domain), domain, strategy, ratio)

    def _sample(self, key: tuple, base: ArtifactRef, domain: str, strategy: str, ratio: float) -> ArtifactRef:
        """`base` (a sessions ref of `domain`) with its training split cut to the strategy's sample at `ratio`."""
        strategy, ratio = full_pool(strategy, ratio)
        if strategy == "all":
            return base
        sampling = SamplingConfig(strategy=strategy, ratio=ratio, seed=self.cfg.sampling_seed,
                                  length_order=self.cfg.length_order)
        vectors = self.embeddings(domain, (domain,))[0] if strategy == "diversity" else None
        hardness = self.difficulty(domain) if strategy == "difficulty" else None
        return self._once((*key, strategy, ratio), lambda: sample_training(base, sampling, vectors, hardness))

    def distilled_sessions(self, domain: str) -> ArtifactRef:
        """The pool sessions the teacher distils: the whole pool, or `teacher_sessions` of it chosen by
        `teacher_sampling` (test and validation sessions untouched)."""
        if self.cfg.teacher_sessions is None:
            return self.sessions(domain)
        sampling = SamplingConfig(strategy=self.cfg.teacher_sampling, size=self.cfg.teacher_sessions,
                                  seed=self.cfg.sampling_seed, length_order=self.cfg.length_order)
        vectors = self.embeddings(domain, (domain,))[0] if sampling.strategy == "diversity" else None
        sample = sample_training.with_options(task_run_name=f"sample-teacher-{sampling.strategy}-{sampling.size}")
        return self._once(("distilled", domain), lambda: sample(self.sessions(domain), sampling, vectors))

    def adapter_sessions(self, domain: str, strategy: str, ratio: float) -> ArtifactRef:
        """What an adapter of one domain trains on: the (sampled) pool, or, with `sft_sessions`, the strategy's
        sample of a random `sft_sessions`-session part of it."""
        if self.cfg.sft_sessions is None:
            return self.sampled_sessions(domain, strategy, ratio)
        part = SamplingConfig(strategy="random", size=self.cfg.sft_sessions, seed=self.cfg.sampling_seed)
        sample = sample_training.with_options(task_run_name=f"sample-sft-random-{part.size}")
        pool = self._once(("sft-pool", domain), lambda: sample(self.sessions(domain), part))
        return self._sample(("sft-sampled", domain), pool, domain, strategy, ratio)

    def difficulty(self, domain: str) -> ArtifactRef:
        """How hard each training session is: for the teacher (its first answer in the rule loop: no extra call
        when the teacher distils the whole pool, one first-turn request per undistilled session otherwise), or for
        the pattern baseline with the session held out of mining."""
        if self.cfg.difficulty == "patterns":
            return self._once(("difficulty", domain, "patterns"), lambda: pattern_difficulty(
                self.sessions(domain), self.cfg.patterns, self.cfg.sampling_seed))
        if self.cfg.teacher_sessions is not None:
            return self._once(("difficulty", domain, "teacher"), lambda: first_answer_difficulty(
                self.sessions(domain), domain, self.cfg.teacher))
        return self._once(("difficulty", domain, "teacher"), lambda: teacher_difficulty(self.knowledge(domain, "rules")))

    def knowledge(self, domain: str, fmt: str, strategy: str = "all", ratio: float = 1.0) -> ArtifactRef:
        """One domain's knowledge of one format, from its (sampled) training sessions."""
        strategy, ratio = full_pool(strategy, ratio)
        sampled = self.sampled_sessions(domain, strategy, ratio)
        if fmt == "raw":
            return sampled
        if fmt == "patterns":
            return self._once(("patterns", domain, strategy, ratio), lambda: mine_patterns(sampled, self.cfg.patterns))
        full = self._once((fmt, domain), lambda: self._distill(domain, fmt))
        if strategy == "all":
            return full
        return self._once((fmt, domain, strategy, ratio), lambda: select_knowledge(full, sampled))

    def _distill(self, domain: str, fmt: str) -> ArtifactRef:
        distilled = self.distilled_sessions(domain)
        if fmt == "rules":
            return resolved(distill_rules(distilled, domain, self.cfg.rules, self.cfg.teacher)).session_rules
        if fmt == "thoughts":
            return resolved(distill_thoughts(distilled, domain, self.cfg.thoughts, self.cfg.teacher)).thoughts
        raise ValueError(f"unknown knowledge format {fmt!r}; expected one of {grid.KNOWLEDGE_FORMATS}")

    def pool(self, domain: str | None, sources: tuple[str, ...], fmt: str, strategy: str, ratio: float) -> ArtifactRef:
        """Knowledge of one format for a target (ids as in pooled_sessions), every source domain sampled alike;
        domain None: for multi-domain SFT."""
        strategy, ratio = full_pool(strategy, ratio)
        if domain is None:
            parts = [self.knowledge(d, fmt, strategy, ratio) for d in sources]
            return self._once(("training", sources, fmt, strategy, ratio), lambda: pool_training(parts))
        others = [self.knowledge(d, fmt, strategy, ratio) for d in sources if d != domain]
        if not others:
            return self.knowledge(domain, fmt, strategy, ratio)
        return self._once(("pool", domain, sources, fmt, strategy, ratio),
                          lambda: combine_domains(self.knowledge(domain, fmt, strategy, ratio), others))

    def retrieved(self, domain: str | None, sources: tuple[str, ...], formats: tuple[str, ...], strategy: str,
                  ratio: float) -> ArtifactRef:
        strategy, ratio = full_pool(strategy, ratio)
        def make() -> ArtifactRef:
            vectors, index = self.embeddings(domain, sources)
            knowledge = {fmt: self.pool(domain, sources, fmt, strategy, ratio) for fmt in formats}
            return retrieve_knowledge(self.pooled_sessions(domain, sources), vectors, index, knowledge,
                                      self.cfg.retrieval)
        return self._once(("retrieved", domain, sources, formats, strategy, ratio), make)

    def adapter(self, domain: str, sources: tuple[str, ...], formats: tuple[str, ...], strategy: str,
                ratio: float, prompt_formats: tuple[str, ...] = ()) -> ArtifactRef:
        """Patterns and rules go into the training input, thoughts become the reasoning before the answer;
        "raw" alone is plain session -> bundles fine-tuning on the (sampled) training sessions. `prompt_formats`
        (SFT+ICL cells): with sft_icl_prompts="match", the training prompts also carry those formats, with the
        demonstration and line counts of the test prompts, so that training and test prompts have one shape."""
        strategy, ratio = full_pool(strategy, ratio)
        sft = self.sft_config(formats, prompt_formats)
        inputs = sft.knowledge.formats
        prompt_formats = prompt_formats if self.cfg.sft_icl_prompts == "match" else ()

        # Several sources: train on their training sessions alone, so that every target shares one adapter.
        target = domain if len(sources) == 1 else None

        def make() -> ArtifactRef:
            if target is None:
                training = self.pooled_sessions(None, sources, strategy, ratio)
            else:
                training = self.adapter_sessions(domain, strategy, ratio)
            retrieved = self.retrieved(target, sources, inputs, strategy, ratio) if inputs else None
            thoughts = self.pool(target, sources, "thoughts", strategy, ratio) if sft.reasoning else None
            return train_adapter(training, retrieved, thoughts, self.cfg.student, sft)
        return self._once(("adapter", target, sources, formats, prompt_formats, strategy, ratio), make)

    def sft_config(self, formats: tuple[str, ...], prompt_formats: tuple[str, ...] = ()) -> SFTConfig:
        """The adapter's SFTConfig: which knowledge its training prompts carry, how much, and whether it reasons."""
        inputs = tuple(f for f in formats if f in ("patterns", "rules"))
        knowledge = self.cfg.sft.knowledge
        if prompt_formats and self.cfg.sft_icl_prompts == "match":
            inputs = tuple(dict.fromkeys(inputs + prompt_formats))
            knowledge = knowledge.model_copy(update={"demonstrations": self.cfg.icl.demonstrations,
                                                     "max_lines": self.cfg.icl.max_lines})
        return self.cfg.sft.model_copy(update={
            "knowledge": knowledge.model_copy(update={"formats": inputs}), "reasoning": "thoughts" in formats})

    def test_prompt(self, cell: grid.Cell) -> ICLConfig:
        """The knowledge of a cell's test prompts. Without an adapter: the cell's prompt formats (ICL). With one:
        the shape its training prompts had, so that an adapter never meets a prompt it was not trained on: an SFT
        cell trained with rules or patterns in its prompts is tested with them (retrieved for the test session, as
        in training), and an SFT+ICL cell (sft_icl_prompts="match") with its training formats and counts. Only
        sft_icl_prompts="sft", kept for comparison, adds prompt knowledge the adapter never read in training."""
        prompt_formats = grid.formats_of(cell.prompt_format)
        if not cell.train_format:
            return self.cfg.icl.model_copy(update={"formats": prompt_formats})
        trained = self.sft_config(grid.formats_of(cell.train_format), prompt_formats).knowledge
        if prompt_formats and self.cfg.sft_icl_prompts == "sft":
            formats = tuple(dict.fromkeys(trained.formats + prompt_formats))
            return self.cfg.icl.model_copy(update={"formats": formats})
        return trained.model_copy(update={"prefill": self.cfg.icl.prefill})

    def predictions(self, cell: grid.Cell) -> ArtifactRef:
        """Cells of different RQs with one configuration (RQ2 at ratio 1.0 is RQ1's cell) share their predictions."""
        sources, prompt_formats = cell.source_domains, grid.formats_of(cell.prompt_format)
        icl = self.test_prompt(cell)

        def make() -> ArtifactRef:
            retrieved = (self.retrieved(cell.domain, sources, icl.formats, cell.strategy, cell.ratio)
                         if icl.formats else None)
            adapter = (self.adapter(cell.domain, sources, grid.formats_of(cell.train_format), cell.strategy,
                                    cell.ratio, prompt_formats) if cell.train_format else None)
            return student_predict(self.sessions(cell.domain), retrieved, adapter, self.cfg.student, icl)
        key = ("predictions", cell.domain, sources, cell.train_format, cell.prompt_format,
               *full_pool(cell.strategy, cell.ratio))
        return self._once(key, make)

    def score_cell(self, cell: grid.Cell) -> ArtifactRef:
        predictions = self.predictions(cell)
        sources, train = cell.source_domains, grid.formats_of(cell.train_format)
        labels = CellLabels(**cell.result_fields(), method="student", model=self.cfg.student.model,
                            sampling_seed=self.cfg.sampling_seed, training_seed=self.cfg.sft.seed if train else None)
        # The very adapter the predictions used (SFT+ICL adapters depend on the prompt formats too).
        adapter = (self.adapter(cell.domain, sources, train, cell.strategy, cell.ratio,
                                grid.formats_of(cell.prompt_format)) if train else None)
        # The pools this cell drew on (all memoised: no task is asked twice), for its quantity and extraction cost.
        used, pool = (*train, *grid.formats_of(cell.prompt_format)), full_pool(cell.strategy, cell.ratio)
        raw = (self.sampled_sessions(cell.domain, *pool) if len(sources) == 1
               else self.pooled_sessions(cell.domain, sources))
        knowledge = {"sessions": raw, **{f: raw if f == "raw" else self.pool(cell.domain, sources, f, *pool)
                                         for f in used}} if used else {}
        # What the test prompt retrieved from, as `predictions` asked for it (memoised refs).
        prompt = [self.pool(cell.domain, sources, f, *pool) for f in self.test_prompt(cell).formats]
        return score_predictions(self.sessions(cell.domain), predictions, labels, adapter=adapter,
                                 knowledge=knowledge, teacher=self.cfg.teacher, prompt_knowledge=prompt)

    def reference_rows(self, domain: str) -> list[ArtifactRef]:
        """The rows every table carries: the two non-LLM baselines, the positional references (no title read), the
        teacher, and the zero-shot student (the same prompt without demonstrations, no adapter), against which
        distillation's effect is measured."""
        rows, sessions = [], self.sessions(domain)
        for method in BASELINE_METHODS:
            knowledge = self.knowledge(domain, "patterns") if method == "pattern" else None
            predictions = predict_baseline(sessions, knowledge, BaselineConfig(method=method))
            labels = CellLabels(domain=domain, method=baseline_label(method))
            rows.append(score_predictions(sessions, predictions, labels))
        for fmt in self.cfg.teacher_rows:
            knowledge = None if fmt == "none" else self.retrieved(domain, (domain,), (fmt,), "all", 1.0)
            answer = resolved(teacher_predict(sessions, self.cfg.teacher_predict, self.cfg.teacher, knowledge))
            labels = CellLabels(domain=domain, method="teacher", knowledge_format=fmt,
                                utilization="none" if fmt == "none" else "icl", model=self.cfg.teacher.model,
                                teacher_tokens=answer.tokens)
            pools = {} if fmt == "none" else {f: self.knowledge(domain, f) for f in grid.formats_of(fmt)}
            rows.append(score_predictions(sessions, answer.predictions, labels, teacher_usage=answer.usage,
                                          knowledge=pools, teacher=self.cfg.teacher))
        zero_shot = student_predict(sessions, None, None, self.cfg.student, self.cfg.icl.model_copy(update={"formats": ()}))
        labels = CellLabels(domain=domain, method="student", model=self.cfg.student.model,
                            sampling_seed=self.cfg.sampling_seed)
        rows.append(score_predictions(sessions, zero_shot, labels))
        return rows


def _on_dask() -> bool:
    # A flow given a DaskTaskRunner has imported prefect_dask already; importing it here would cost every run ~3 s.
    dask = sys.modules.get("prefect_dask")
    return dask is not None and isinstance(FlowRunContext.get().task_runner, dask.DaskTaskRunner)


def evaluate_cells(cells: list[grid.Cell], cfg: PipelineConfig, key: str) -> ArtifactRef:
    """Score every cell plus the reference rows of each target domain; publish one results table and report.

    On a Dask task runner (flows/scale_out.py) every stage is submitted, so independent adapters and predictions
    run at once on the cluster; otherwise the stages run one after the other in the flow's process.
    """
    plan = Plan(cfg)
    with submitted_stages(enabled=_on_dask()):
        rows = [row for domain in dict.fromkeys(c.domain for c in cells) for row in plan.reference_rows(domain)]
        rows += [plan.score_cell(cell) for cell in cells]
        table = resolved(collect_results(rows))
    publish_results(table, key, settings().results_dir, cfg.data_dirs)
    publish_report(table, key, settings().results_dir)
    return table
