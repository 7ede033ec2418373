"""Embedded teacher sessions/s: llama.cpp's server (the default) against llm-katan, on the student bench's prompts.

    .venv/bin/python bench/teacher_bench.py                          # llama.cpp serving the shipped SmolLM2 GGUF
    .venv/bin/python bench/teacher_bench.py --backend transformers   # llm-katan, the embedded teacher before
    .venv/bin/python bench/teacher_bench.py --schema json_object     # + each request holds the answer to a schema

The prompts are those of `bench/student_bench.py --teacher-embedded` (the 0.118 sessions/s figure of llm-katan in
bench/README.md): AICL's detection request with 2 retrieved raw demonstrations (MiniLM) for the 9 test sessions of
electronic (60 train sessions), at most 128 new tokens, temperature 0, 8 requests at a time, no request cache.
Server start-up is excluded. Prints sessions/s, new tokens/s, finish reasons, and how many answers are JSON that
conform to the session's answer schema (product names of that session, 2+ per bundle).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import polars as pl
from student_bench import _real_sessions, _retrieve  # the same slice and retrieval as the 0.118 run

from kd_bundle.student.icl import ICLConfig, knowledge_sections, user_message
from kd_bundle.teacher.backends import BACKENDS, default_threads
from kd_bundle.teacher.server import start_server, stop_server


def answer_schema(n_items: int, max_bundles: int = 5) -> dict:
    """`{"bundle1": ["product2", "product5"], ...}` over this session's products, 2+ per bundle."""
    products = {"type": "array", "items": {"type": "string", "enum": [f"product{p}" for p in range(1, n_items + 1)]},
                "minItems": 2, "maxItems": n_items}
    keys = [f"bundle{b}" for b in range(1, max_bundles + 1)]
    return {"type": "object", "properties": {k: products for k in keys}, "required": keys[:1],
            "additionalProperties": False}


def response_format(dialect: str, n_items: int) -> dict | None:
    """OpenAI's form (`json_schema`, also vLLM's) or llama-cpp-python's (`json_object` with a `schema`)."""
    schema = answer_schema(n_items)
    if dialect == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "bundles", "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema} if dialect == "json_object" else None


def conforms(text: str, n_items: int) -> bool:
    try:
        answer = json.loads(text)
    except ValueError:
        return False
    names = {f"product{p}" for p in range(1, n_items + 1)}
    return (isinstance(answer, dict) and "bundle1" in answer and all(
        isinstance(b, list) and len(b) >= 2 and set(b) <= names for b in answer.values()))


def measure(base_url: str, model: str, prompts: list[tuple[str, int]], args) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="local", timeout=900, max_retries=0)

    def ask(prompt: tuple[str, int]) -> tuple[int, str, bool]:
        text, n_items = prompt
        fmt = response_format(args.schema, n_items)
        response = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=args.max_new_tokens,
            temperature=0.0, **({"response_format": fmt} if fmt else {}))
        choice = response.choices[0]
        return (response.usage.completion_tokens if response.usage else 0), choice.finish_reason, \
            conforms(choice.message.content or "", n_items)

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(pool.map(ask, prompts))
    seconds = time.perf_counter() - started
    return {"sessions": len(prompts), "seconds": round(seconds, 2), "sessions_per_s": round(len(prompts) / seconds, 3),
            "new_tokens_per_s": round(sum(a[0] for a in answers) / seconds, 1),
            "finish_reasons": dict(Counter(a[1] for a in answers)), "schema_conforming": sum(a[2] for a in answers),
            "concurrency": args.concurrency, "schema": args.schema}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    slice_args = argparse.Namespace(domain=args.domain, train_sessions=args.train_sessions,
                                    test_sessions=args.test_sessions, retrieval=args.retrieval, k=args.k)
    sessions = _real_sessions(slice_args)
    knowledge = knowledge_sections(_retrieve(sessions, slice_args), ("raw",))
    icl = ICLConfig(demonstrations=args.k)
    targets = sessions.filter(pl.col("split") == "test")
    prompts = [(user_message(titles, knowledge.get(sid, []), icl.demonstrations, icl.max_lines), len(titles))
               for sid, titles in targets.select("session_id", "titles").iter_rows()]
    port = args.port or _free_port()
    started = time.perf_counter()
    server = start_server("smollm2", model=args.model, host="127.0.0.1", port=port, backend=args.backend)
    try:
        report = {"backend": args.backend, "startup_s": round(time.perf_counter() - started, 1),
                  "threads": default_threads() if args.backend == "llama-cpp" else None,
                  **measure(server.base_url, "smollm2", prompts, args)}
    finally:
        stop_server(port)
    load = os.getloadavg()
    report["load_average_1_5_15"] = [round(x, 2) for x in load]
    print(json.dumps(report, indent=1))
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/teacher_bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="llama-cpp", choices=BACKENDS[:2])
    parser.add_argument("--model", default="smollm2", help="llama-cpp: 'smollm2' or a .gguf; transformers: a folder")
    parser.add_argument("--schema", default="none", choices=["none", "json_object", "json_schema"],
                        help="ask for the answer schema: json_object = llama-cpp-python's form, json_schema = OpenAI's")
    parser.add_argument("--domain", default="electronic", choices=["electronic", "clothing", "food"])
    parser.add_argument("--train-sessions", type=int, default=60)
    parser.add_argument("--test-sessions", type=int, default=9)
    parser.add_argument("--k", type=int, default=2, help="retrieved raw demonstrations per prompt")
    parser.add_argument("--retrieval", default="auto", choices=["auto", "minilm", "tfidf"])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    return parser


if __name__ == "__main__":
    sys.exit(main())
