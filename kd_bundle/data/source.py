"""Where a run's sessions come from: a shipped domain, or your own data folder and its label.

Every entry point that reads sessions (the flows, `python -m kd_bundle score / distill`) takes the same two options,
`--data DIR` and `--domain-name NAME`, and turns them into a label and a `DataConfig` here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kd_bundle.config import DOMAINS, DataConfig, domain_label
from kd_bundle.data.checks import DataError


def data_source(domain: str, data_dir: str | None, domain_name: str | None) -> tuple[str, dict[str, str]]:
    """The domain label and the own-data folders to read: `domain` (shipped), or `data_dir` labelled by `domain_name`
    or the folder's name. The folder is resolved here, where the run starts, so that every worker reads the folder
    the user meant."""
    if data_dir is None:
        if domain_name is not None:
            raise DataError(f"domain_name {domain_name!r} labels a data folder: give data_dir (--data) too")
        if domain not in DOMAINS:
            raise DataError(f"domain {domain!r} is not a shipped domain {DOMAINS}: give your data folder (--data DIR)")
        return domain, {}
    folder = Path(data_dir).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"data folder {data_dir}: no such folder (expected items and bundles tables, docs/data.md)")
    try:
        label = domain_label(folder, domain_name)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    return label, {label: str(folder)}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """`--data DIR` and `--domain-name NAME`, the same on every entry point that reads sessions."""
    parser.add_argument("--data", metavar="DIR", help="your own data: a folder with items and bundles tables (CSV or "
                        "Parquet, docs/data.md); replaces --domain")
    parser.add_argument("--domain-name", metavar="NAME", help="label of --data's rows (default: the folder's name)")


def data_config(args: argparse.Namespace, **slices: Any) -> DataConfig:
    """The DataConfig an entry point's parsed `--domain` / `--data` / `--domain-name` name, with `slices` set."""
    label, folders = data_source(args.domain, args.data, args.domain_name)
    return DataConfig(domain=label, custom_dir=folders.get(label), **slices)
