"""llama.cpp's OpenAI-compatible server (llama-cpp-python), also taking OpenAI's form of a JSON-schema answer.

    python -m kd_bundle.teacher.llama_server --model X.gguf --model_alias smollm2 --port P ...   # llama_cpp.server's options

llama-cpp-python 0.3.36 decodes under a schema given in its own form, `{"type": "json_object", "schema": S}`, and
rejects OpenAI's `{"type": "json_schema", "json_schema": {"name": ..., "schema": S}}` with HTTP 422: the form OpenAI,
vLLM and llama.cpp's C++ server take, and the one kd_bundle's teacher client sends. This runs the same server behind
a small ASGI layer that rewrites the second form into the first, so the embedded teacher holds its answers to the
schema like any other endpoint instead of making the client fall back to plain text.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

CHAT_PATHS = ("/v1/chat/completions", "/v1/completions")


def openai_schema_form(body: bytes) -> bytes:
    """The request body with an OpenAI `json_schema` response_format in llama-cpp-python's form; else unchanged."""
    try:
        request = json.loads(body)
    except ValueError:
        return body  # the server answers a malformed body itself
    response_format = request.get("response_format") if isinstance(request, dict) else None
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return body
    schema = (response_format.get("json_schema") or {}).get("schema")
    request["response_format"] = {"type": "json_object", **({"schema": schema} if schema is not None else {})}
    return json.dumps(request).encode()


class OpenAISchemaForm:
    """ASGI middleware applying `openai_schema_form` to the body of completion requests."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in CHAT_PATHS:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay(message, receive), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = openai_schema_form(b"".join(chunks))
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers},
                       _replay({"type": "http.request", "body": body, "more_body": False}, receive), send)


def _replay(first: dict, receive: Any) -> Any:
    pending = [first]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed


def main(argv: list[str] | None = None) -> int:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(prog="python -m kd_bundle.teacher.llama_server",
                                     description=__doc__.split("\n")[0])
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    server = parse_model_from_args(ServerSettings, args)
    app = create_app(server_settings=server, model_settings=[parse_model_from_args(ModelSettings, args)])
    uvicorn.run(OpenAISchemaForm(app), host=server.host, port=server.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
