"""Data stage: load one domain's sessions into the store. Cached on the bytes of the source files, not their path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS

from kd_bundle.config import DataConfig
from kd_bundle.data import sessions
from kd_bundle.store import ArtifactRef, write_artifact
from tasks.common import SourceFiles, stage_task

_SOURCE_FILES = ["aicl/session_items.csv", "aicl/split.csv", "aicl/item_titles.csv", "aicl/session_bundles_dedup.csv",
                 "item_categories.csv", "item_idx_mapping.csv"]


def domain_files(inputs: dict[str, Any]) -> list[Path]:
    cfg: DataConfig = inputs["cfg"]
    if cfg.custom_dir:
        return sorted(Path(cfg.custom_dir).glob("*.csv")) + sorted(Path(cfg.custom_dir).glob("*.parquet"))
    folder = Path(inputs["data_root"]) / cfg.domain
    return [folder / name for name in _SOURCE_FILES if (folder / name).exists()]


@stage_task("data.sessions", inputs=(INPUTS - "data_root") + SourceFiles(finder=domain_files),
            task_run_name="load-sessions-{cfg.domain}")
def load_sessions(cfg: DataConfig, data_root: Path) -> ArtifactRef:
    return write_artifact(sessions.load_sessions(cfg, data_root), "sessions")
