"""What checking an artifact against its name costs, next to reading it (issue 22).

    .venv/bin/python bench/store_check.py [--out DIR] [--text-mb 4] [--repeat 5]
    .venv/bin/python bench/store_check.py --store .kd-cache/store [--largest 3]   # a real store's largest artifacts

Without --store it builds, in a scratch store under --out, the largest artifacts a grid makes: a text frame of real
Electronic titles (predictions / retrieved knowledge, ~--text-mb of zstd Parquet), an embeddings-like frame (float32
vectors of every session of the three domains: incompressible) and an adapter folder shaped like SmolLM2-135M's LoRA
(r 16 on all linear layers, fp32 safetensors, ~20 MB, with the JSON files training writes). For each it prints the
size, the time of `is_sound` (the sha256 check tasks/common.py Stage runs on every cached result), the time of the
read a stage does (`read_artifact`; for an adapter every safetensors tensor loaded and the JSON files read: peft
loads the base model on top, so a real load costs more) and their ratio, warm (page cache, best of --repeat) and
cold (each file's pages dropped with posix_fadvise first; on a filesystem that ignores it cold reads equal warm).
With --store it also times a full `store verify` (no repair) of that store; with --prefect, a cached stage call
(tasks.common.stage_task) per artifact, with the check and without it. CPU and hash library are printed first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from kd_bundle.config import settings  # noqa: E402
from kd_bundle.store import DIRECTORY_KINDS, ArtifactRef, is_sound, read_artifact, write_artifact, write_directory  # noqa: E402
from kd_bundle.store_admin import stored_artifacts, verify  # noqa: E402

# SmolLM2-135M: 30 decoder layers, hidden 576, MLP 1536, 3 KV heads of 64; LoRA on every linear layer.
SMOLLM2_LINEARS = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
                   "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}


def cpu_info() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    sha = "SHA-NI" if "sha_ni" in flags else "no SHA-NI"
    return f"{model}, {os.cpu_count()} logical CPUs, {sha}; hashlib {ssl.OPENSSL_VERSION}"


def text_frame(megabytes: float) -> pl.DataFrame:
    """Sessions of real Electronic titles with long answers, grown until the Parquet is about `megabytes`."""
    titles = pl.read_csv(settings().data_root / "electronic" / "aicl" / "item_titles.csv", infer_schema_length=0)
    words = titles[titles.columns[-1]].drop_nulls().to_list()
    rng = np.random.default_rng(0)
    rows = max(1, int(megabytes * 1e6 / 900))  # ~900 compressed bytes per row, measured once
    picks = rng.integers(0, len(words), size=(rows, 12))
    raw = ["Bundle 1: " + "; ".join(words[i] for i in row[:6]) + "\nBundle 2: " + "; ".join(words[i] for i in row[6:])
           for row in picks]
    return pl.DataFrame({"session_id": range(rows), "raw": raw, "knowledge": [[r, r[::-1]] for r in raw],
                         "bundles": [[[str(i) for i in row[:3]], [str(i) for i in row[3:6]]] for row in picks]})


def embeddings_frame(sessions: int = 2700, dim: int = 384) -> pl.DataFrame:
    vectors = np.random.default_rng(1).standard_normal((sessions, dim)).astype(np.float32)
    return pl.DataFrame({"session_id": range(sessions), "embedding": vectors})


def adapter_folder(target: Path, rank: int = 16, layers: int = 30) -> Path:
    rng = np.random.default_rng(2)
    tensors = {}
    for layer in range(layers):
        for name, (fan_in, fan_out) in SMOLLM2_LINEARS.items():
            prefix = f"base_model.model.model.layers.{layer}.{'self_attn' if name[0] in 'qkvo' else 'mlp'}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, fan_in)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((fan_out, rank)).astype(np.float32)
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "adapter_model.safetensors"))
    config = {"r": rank, "lora_alpha": 32, "target_modules": "all-linear"}
    (target / "adapter_config.json").write_text(json.dumps(config))
    for name in ("student_config.json", "sft_config.json", "curves.json", "base.json"):
        (target / name).write_text(json.dumps({"bench": name}))
    return target


def read_adapter(folder: Path) -> int:
    """What loading an adapter reads: every tensor of its safetensors files and its JSON files."""
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".safetensors":
            count += len(load_file(str(path)))
        elif path.suffix == ".json":
            json.loads(path.read_text())
    return count


def drop_cache(path: Path) -> None:
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(action: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def timed_cold(action: Callable[[], object], path: Path, repeat: int) -> float:
    """Best of `repeat` runs, each after the artifact's pages were dropped from the page cache."""
    best = float("inf")
    for _ in range(repeat):
        drop_cache(path)
        best = min(best, timed(action, 1))
    return best


def measure(ref: ArtifactRef, root: Path, repeat: int) -> dict:
    path = ref.path(root)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    check = lambda: is_sound(ref, root)  # noqa: E731
    read = (lambda: read_adapter(path)) if ref.kind in DIRECTORY_KINDS else (lambda: read_artifact(ref, root))  # noqa: E731
    assert check(), f"{ref} does not match its hash"
    read()  # warm the page cache, and import-time work out of the figures
    warm_hash, warm_read = timed(check, repeat), timed(read, repeat)
    cold_hash, cold_read = timed_cold(check, path, repeat), timed_cold(read, path, repeat)
    return {"kind": ref.kind, "name": path.name[:12], "bytes": size, "hash_warm": warm_hash, "read_warm": warm_read,
            "hash_cold": cold_hash, "read_cold": cold_read}


def cached_stage_calls(root: Path, refs: list[ArtifactRef], out: Path, calls: int) -> None:
    """A cached stage's call as a flow makes it, timed with the hash check (Stage) and without (its bare task).

    Starts Prefect's test server (~10-20 s, not timed) with records and locks in scratch folders under `out`."""
    os.environ.update(KD_STORE=str(root), PREFECT_HOME=str(out / "prefect-home"),
                      PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(out / "prefect-results"),
                      PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_LOGGING_LEVEL="CRITICAL",
                      PREFECT_SERVER_ANALYTICS_ENABLED="false")
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from tasks.common import stage_task

    @stage_task()
    def hand_back(ref: ArtifactRef) -> ArtifactRef:
        return ref

    @flow
    def reruns() -> list[tuple[str, float, float, float]]:
        # The test server's in-process event recorder logs a cancelled flush as a traceback; it costs no figure.
        logging.getLogger("prefect.server.services.task_run_recorder").disabled = True
        figures = []
        for ref in refs:
            hand_back(ref)  # computes once; every later call is a cache hit
            checked = timed(lambda: hand_back(ref), calls)
            bare = timed(lambda: hand_back.task(ref), calls)
            figures.append((f"{ref.kind} {ref.sha256[:12]}", checked, bare, timed(lambda: is_sound(ref), calls)))
        return figures

    with prefect_test_harness(server_startup_timeout=180):
        rows = reruns()
    print(f"{'cached stage call':<26} {'with check ms':>13} {'bare ms':>8} {'is_sound ms':>11} {'check share':>11}")
    for name, checked, bare, check in rows:
        print(f"{name:<26} {checked * 1e3:>13.1f} {bare * 1e3:>8.1f} {check * 1e3:>11.1f} {check / checked:>11.0%}")


def built_artifacts(out: Path, text_mb: float) -> tuple[Path, list[ArtifactRef]]:
    root = out / "store"
    shutil.rmtree(root, ignore_errors=True)
    refs = [write_artifact(text_frame(text_mb), "retrieved", root),
            write_artifact(embeddings_frame(), "embeddings", root)]
    refs.append(write_directory(adapter_folder(out / "adapter-src"), "adapter", root))
    shutil.rmtree(out / "adapter-src")
    return root, refs


def largest_artifacts(root: Path, per_kind: int) -> list[ArtifactRef]:
    by_kind: dict[str, list] = {}
    for artifact in stored_artifacts(root):
        by_kind.setdefault(artifact.kind, []).append(artifact)
    chosen = [a for kind in sorted(by_kind) for a in sorted(by_kind[kind], key=lambda a: -a.bytes)[:per_kind]]
    return [ArtifactRef(kind=a.kind, sha256=a.sha256, rows=0) for a in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="measure this store's largest artifacts instead of building some")
    parser.add_argument("--largest", type=int, default=2, help="with --store: artifacts per kind (default 2)")
    parser.add_argument("--out", type=Path, default=Path(".kd-cache/bench/store-check"), help="scratch store")
    parser.add_argument("--text-mb", type=float, default=4.0, help="size of the text artifact built (default 4)")
    parser.add_argument("--repeat", type=int, default=5, help="timings: best of N (default 5)")
    parser.add_argument("--prefect", action="store_true",
                        help="also time a cached stage call with and without the check (starts a Prefect test server)")
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_info()}; python {platform.python_version()}, polars {pl.__version__}")
    if args.store:
        root, refs = args.store, largest_artifacts(args.store, args.largest)
    else:
        root, refs = built_artifacts(args.out, args.text_mb)
    print(f"{'artifact':<26} {'MB':>7} {'sha256 ms':>10} {'read ms':>8} {'hash/read':>9} "
          f"{'cold sha256':>11} {'cold read':>9} {'hash/read':>9}  (sha256 MB/s)")
    for ref in refs:
        m = measure(ref, root, args.repeat)
        print(f"{m['kind'] + ' ' + m['name']:<26} {m['bytes'] / 1e6:>7.2f} {m['hash_warm'] * 1e3:>10.1f} "
              f"{m['read_warm'] * 1e3:>8.1f} {m['hash_warm'] / m['read_warm']:>9.2f} {m['hash_cold'] * 1e3:>11.1f} "
              f"{m['read_cold'] * 1e3:>9.1f} {m['hash_cold'] / m['read_cold']:>9.2f}  "
              f"({m['bytes'] / 1e6 / m['hash_warm']:.0f})")
    if args.store:
        report = verify(root)
        print(f"store verify of {root}: {report.checked} artifacts, {report.bytes / 1e6:.1f} MB in "
              f"{report.seconds:.2f} s ({report.bytes / 1e6 / max(report.seconds, 1e-9):.0f} MB/s), "
              f"{len(report.bad)} bad")
    if args.prefect:
        cached_stage_calls(root, refs, args.out, args.repeat)
    block = bytes(64 << 20)
    print(f"sha256 of 64 MiB in memory: {64 * 1.048576 / timed(lambda: hashlib.sha256(block).digest(), 3):.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
