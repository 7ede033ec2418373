"""Data stage: load one domain's sessions into the store. Cached on the bytes of the source files, not their path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, CachePolicy
from prefect.utilities.hashing import hash_objects

from kd_bundle.config import DataConfig
from kd_bundle.data import sessions
from kd_bundle.store import ArtifactRef, write_artifact
from tasks.common import SourceFiles, stage_task


def domain_files(inputs: dict[str, Any]) -> list[Path]:
    return sessions.source_files(inputs["cfg"], Path(inputs["data_root"]))


@dataclass
class DataConfigWithoutFolder(CachePolicy):
    """The data config minus `custom_dir`: the same tables in another folder are the same data (SourceFiles hashes
    their bytes), and one folder whose tables changed is new data."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        return hash_objects(inputs["cfg"].model_dump(mode="json", exclude={"custom_dir"}), raise_on_failure=True)


@stage_task("data.sessions", inputs=(INPUTS - "data_root" - "cfg") + DataConfigWithoutFolder()
            + SourceFiles(finder=domain_files), task_run_name="load-sessions-{cfg.domain}")
def load_sessions(cfg: DataConfig, data_root: Path) -> ArtifactRef:
    return write_artifact(sessions.load_sessions(cfg, data_root), "sessions")
