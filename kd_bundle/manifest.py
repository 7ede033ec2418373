"""A run manifest: what produced a results table, stored in its Parquet key-value metadata.

Kept out of every cache key (the store's artifact is untouched; only the published copy carries it), so that
a rerun elsewhere still reuses the cache, while the file says which code, packages, seeds, data and device
made its numbers.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

MANIFEST_KEY = b"kd_bundle.manifest"
PACKAGES = ("kd-bundle", "torch", "transformers", "peft", "polars", "pyarrow", "prefect", "scikit-learn", "faiss-cpu",
            "numpy", "efficient-apriori", "openai", "pydantic")
_REPO = Path(__file__).resolve().parent.parent


def git_commit(repo: Path = _REPO) -> str:
    """HEAD of the kd-bundle checkout, '+dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device() -> str:
    """The accelerator torch ran on in this process, or 'cpu' (torch is not imported just to ask)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return f"cpu: {platform.machine()} {platform.processor() or ''}".strip()


def files_sha256(paths: list[Path]) -> str:
    """One hash over the names and bytes of the input files (sorted): the data a table was computed from."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.name).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def seeds_in(parameters: Any, prefix: str = "") -> dict[str, Any]:
    """Every `*seed*` value in nested run parameters, by dotted path (pipeline.sampling_seed, ...)."""
    found: dict[str, Any] = {}
    if hasattr(parameters, "model_dump"):  # a flow run's parameters in-process are the validated configs
        parameters = parameters.model_dump(mode="json")
    if isinstance(parameters, dict):
        for key, value in parameters.items():
            path = f"{prefix}{key}"
            if "seed" in str(key) and not isinstance(value, (dict, list)):
                found[path] = value
            found.update(seeds_in(value, path + "."))
    return found


def build_manifest(seeds: dict[str, Any], data_sha256: str, **extra: Any) -> dict[str, Any]:
    return {"kd_bundle_commit": git_commit(), "packages": package_versions(), "seeds": seeds,
            "data_sha256": data_sha256, "device": device(), **extra}


def write_with_manifest(source: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Copy the Parquet `source` to `target` with `manifest` (JSON) in its schema metadata."""
    table = pq.read_table(source)
    meta = {**(table.schema.metadata or {}), MANIFEST_KEY: json.dumps(manifest, sort_keys=True).encode()}
    pq.write_table(table.replace_schema_metadata(meta), target)


def read_manifest(path: Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    if MANIFEST_KEY not in meta:
        raise KeyError(f"{path}: no {MANIFEST_KEY.decode()} in its Parquet metadata")
    return json.loads(meta[MANIFEST_KEY])
