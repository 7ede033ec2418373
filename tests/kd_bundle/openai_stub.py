"""A real OpenAI-compatible HTTP server on 127.0.0.1 for teacher tests: scripted answers, scripted faults.

It speaks HTTP over a socket, so the `openai` client under test runs unmodified. It counts every request it
receives, can fail the next requests with a status, a dropped connection or a malformed HTTP 200 (an HTML page,
JSON without choices, an empty answer, an answer cut off at max_tokens), can hold requests after N answers (so a
test can kill the client mid-run at a known point), and can honour or reject `response_format` json_schema
requests the way llama.cpp's server and an older endpoint do.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import jsonschema
import pytest

from kd_bundle.teacher import request_key

Responder = Callable[[list[dict[str, str]]], str]
DROP = "drop"  # fault: close the connection without an answer
HTML = "html"  # fault: HTTP 200 with a login page (a proxy, a wrong URL)
NO_CHOICES = "no-choices"  # fault: HTTP 200, JSON without `choices`
EMPTY = "empty"  # fault: HTTP 200, a choice whose content is empty
TRUNCATED = "length"  # fault: HTTP 200, the scripted answer cut in half, finish_reason "length"
MALFORMED = (HTML, NO_CHOICES, EMPTY, TRUNCATED)
IGNORE, HONOUR, REJECT = "ignore", "honour", "reject"  # what the server does with a json_schema response_format
STRICT = "strict"  # like OpenAI's strict mode: honours only schemas of its subset (every key required, no length keywords)
STRICT_REFUSED = ("uniqueItems", "minItems", "maxItems", "minLength", "maxLength")


def schema_answer(schema: dict) -> dict:
    """The smallest answer a schema-constrained decoder could write: the required keys only, each bundle with the
    first minItems products, each intent a fixed phrase."""
    return {key: _value(schema["properties"][key]) for key in schema["required"]}


def strict_mode_problem(schema: dict) -> str | None:
    """Why OpenAI's strict mode would refuse `schema` (None: it would not)."""
    refused = [key for key in STRICT_REFUSED if key in schema]
    if refused:
        return f"'{refused[0]}' is not permitted"
    if "properties" in schema:
        if sorted(schema.get("required", [])) != sorted(schema["properties"]):
            return "'required' is required to be supplied and to be an array including every key in properties"
        if schema.get("additionalProperties") is not False:
            return "'additionalProperties' is required to be supplied and to be false"
    children = list(schema.get("properties", {}).values()) + schema.get("anyOf", []) + [schema.get("items") or {}]
    return next((problem for child in children if child and (problem := strict_mode_problem(child))), None)


def _value(schema: dict):
    if "anyOf" in schema:  # a nullable bundle of the strict form: unused
        return None
    if schema["type"] == "array":
        return schema["items"]["enum"][: schema.get("minItems", 2)]
    if schema["type"] == "object":  # the intent form of a bundle
        return {"products": _value(schema["properties"]["products"]), "intent": "device with accessories"}
    return "device with accessories"


class StubOpenAI:
    def __init__(self, responder: Responder, latency_s: float = 0.0):
        self.responder = responder
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.attempts = 0  # every POST received
        self.answered: list[dict] = []  # request bodies answered with 200
        self.headers: list[dict[str, str]] = []
        self.faults: list[int | str] = []  # consumed one per request, in order
        self.always_fail: int | str | None = None
        self.schemas = IGNORE  # IGNORE answers as text, like llm-katan; HONOUR and REJECT: see schema_answer / 400
        self.response_formats: list[dict | None] = []  # response_format of every POST, in order of arrival
        self.bodies: list[dict] = []  # every POST body, answered or not
        self.retry_after: str | None = None
        self.hold_after: int | None = None  # hold every request once this many were answered
        self.held = threading.Event()
        self.release = threading.Event()
        self.inflight = 0
        self.max_inflight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def answered_keys(self, model: str, generation: dict) -> set[str]:
        return {request_key(model, body["messages"], generation) for body in self.answered}

    def distinct_requests(self) -> int:
        """Distinct requests received (by messages and response_format), however often each was retried."""
        return len({json.dumps([b["messages"], b.get("response_format")], sort_keys=True) for b in self.bodies})

    def __enter__(self) -> "StubOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub.lock:
                    stub.attempts += 1
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                    stub.response_formats.append(body.get("response_format"))
                    stub.bodies.append(body)
                    fault = stub.faults.pop(0) if stub.faults else stub.always_fail
                    hold = stub.hold_after is not None and len(stub.answered) >= stub.hold_after
                    stub.inflight += 1
                    stub.max_inflight = max(stub.max_inflight, stub.inflight)
                try:
                    if hold:
                        stub.held.set()
                        stub.release.wait(30)
                        self.close_connection = True
                        return
                    if fault == DROP:
                        self.close_connection = True
                        return
                    if fault == HTML:
                        self._send(200, "text/html", b"<html><head><title>Sign in</title></head>\n<body>Log in</body></html>")
                        return
                    if fault == NO_CHOICES:
                        self._json(200, {"id": "x", "object": "chat.completion", "usage": {"prompt_tokens": 1}})
                        return
                    if fault is not None and fault not in MALFORMED:
                        self._json(int(fault), {"error": {"message": f"scripted {fault}", "type": "server_error"}})
                        return
                    if self.path.rstrip("/") != "/v1/chat/completions":
                        self._json(404, {"error": {"message": f"no route {self.path}"}})
                        return
                    requested = body.get("response_format") or {}
                    if stub.schemas == REJECT and requested:
                        self._json(400, {"error": {"message": "'response_format' of type 'json_schema' is not supported",
                                                   "type": "invalid_request_error", "param": "response_format"}})
                        return
                    time.sleep(stub.latency_s)
                    if stub.schemas == STRICT and requested and (
                            problem := strict_mode_problem(requested["json_schema"]["schema"])):
                        self._json(400, {"error": {"message": f"Invalid schema for response_format 'bundles': {problem}",
                                                   "type": "invalid_request_error", "param": "response_format"}})
                        return
                    if stub.schemas in (HONOUR, STRICT) and requested.get("type") == "json_schema":
                        schema = requested["json_schema"]["schema"]
                        try:  # what llama.cpp and vLLM do: refuse a schema they cannot compile
                            jsonschema.Draft202012Validator.check_schema(schema)
                            answer = schema_answer(schema)
                            jsonschema.validate(answer, schema)
                        except (jsonschema.SchemaError, jsonschema.ValidationError, KeyError) as exc:
                            self._json(400, {"error": {"message": f"invalid json_schema: {exc}"[:300]}})
                            return
                        text = json.dumps(answer)
                    else:
                        text = stub.responder(body["messages"])
                    finish_reason = "stop"
                    if fault == EMPTY:
                        text = ""
                    elif fault == TRUNCATED:
                        text, finish_reason = text[: len(text) // 2], "length"
                    with stub.lock:
                        stub.answered.append(body)
                    prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
                    self._json(200, {
                        "id": f"chatcmpl-{stub.attempts}", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": finish_reason,
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                                  "total_tokens": prompt_tokens + len(text.split())},
                    })
                finally:
                    with stub.lock:
                        stub.inflight -= 1

            def _json(self, status: int, payload: dict) -> None:
                self._send(status, "application/json", json.dumps(payload).encode())

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if status == 429 and stub.retry_after is not None:
                    self.send_header("Retry-After", stub.retry_after)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def bundle_teacher(messages: list[dict[str, str]]) -> str:
    """A well-behaved scripted teacher for AICL's prompts: readable bundles, rules, thoughts, intents."""
    last = messages[-1]["content"]
    if last.startswith("A bundle can be") and "Explain step by step" in last:
        return ("Step 1: the first product is a device and the second is an accessory for it. "
                "Step 2: the user wants to use the device on the go. Step 3: the accessory only fits that device, "
                "so both form one bundle while the other products serve unrelated needs.")
    if "which rules do you find" in last:
        return ("1. Group a device with the accessories made for it.\n"
                "2. Products of the same brand and type often form a bundle.\n"
                "- Group a device together with accessories made for it.\n"
                "Thanks for asking?")
    if "3 to 5 words" in last or "regenerate the intents" in last:
        return "{'bundle1': 'device with accessories'}"
    if "tips" in last or "could not be read" in last:
        return "Adjusted: {'bundle1': ['product1', 'product2', 'product3']}"
    return "```python\n{'bundle1': ['product1', 'product2']}\n```"


# ---- fixtures shared by the teacher tests (import them into a test module to use them) ------------------------
SECRET_KEY = "sk-test-DO-NOT-LEAK-4711"


@pytest.fixture
def teacher_env(tmp_path, monkeypatch):
    """A private store and a secret API key; returns the store root."""
    store = tmp_path / "store"
    monkeypatch.setenv("KD_STORE", str(store))
    monkeypatch.setenv("KD_TEACHER_API_KEY", SECRET_KEY)
    monkeypatch.setenv("KD_TEACHER_BACKOFF_INITIAL_S", "0.01")
    monkeypatch.setenv("KD_TEACHER_BACKOFF_MAX_S", "0.05")
    monkeypatch.setenv("KD_TEACHER_TIMEOUT_S", "10")
    return store


@pytest.fixture
def stub(teacher_env, monkeypatch):
    with StubOpenAI(bundle_teacher) as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        yield server


@pytest.fixture(scope="session")
def electronic_sessions():
    """Real sessions of the electronic domain: 4 training, 3 test."""
    from kd_bundle.config import DataConfig, settings
    from kd_bundle.data.sessions import load_sessions

    root = settings().data_root
    if not (root / "electronic" / "aicl").exists():
        pytest.skip(f"shared data not found under {root}")
    return load_sessions(DataConfig(domain="electronic", max_train_sessions=4, max_test_sessions=3), root)
