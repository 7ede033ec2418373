"""Serve an exported student (kd_bundle.student.export) behind an OpenAI-compatible endpoint on 127.0.0.1.

    python -m kd_bundle serve FOLDER [--port 8766] [--host 127.0.0.1] [--served-model-name NAME] [--outtype auto]

The server is llama.cpp's (llama-cpp-python[server]), the one the embedded teacher runs, behind the same small layer
that takes OpenAI's `json_schema` response_format (kd_bundle.teacher.llama_server): it decodes under the schema's
grammar, so an answer always parses. `transformers serve` and llm-katan both ignore `response_format`
(docs/student.md, "Export and serve the distilled student", has the comparison). llama.cpp serves GGUF, so the
folder is converted once by llama.cpp's own converter (convert_hf_to_gguf.py of the same llama.cpp release the server
is built from, installed by `make install`) into `<FOLDER>.<weights hash>.<outtype>.gguf` beside it; a later start
reuses that file, and a re-exported folder (other weights) gets a new one.

Started, health-checked and stopped by the teacher's helpers (kd_bundle.teacher.server): it stops on Ctrl-C or
SIGTERM, and also when this command dies, however it dies. To use the student as the next round's teacher, point
KD_TEACHER_BASE_URL at the printed URL and set TeacherConfig.model to the printed name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from kd_bundle.manifest import files_sha256
from kd_bundle.teacher.backends import N_CTX, ServerError
from kd_bundle.teacher.server import ServerInfo, start_server, stop_server

log = logging.getLogger(__name__)

DEFAULT_PORT = 8766  # the embedded teacher's default is 8765: both can run at once
CONVERTER_ENV = "KD_GGUF_CONVERTER"
OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")  # auto: llama.cpp's choice, 16-bit of the folder's precision


def converter_script() -> Path:
    """llama.cpp's convert_hf_to_gguf.py: $KD_GGUF_CONVERTER, else where `make install` puts it in the venv."""
    path = Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix) / "share" / "kd-bundle" / "llama.cpp"
                / "convert_hf_to_gguf.py")
    if not path.is_file():
        raise ServerError(f"llama.cpp's HF-to-GGUF converter is not at {path}; `make install` fetches it from the "
                          f"llama-cpp-python sdist (or set {CONVERTER_ENV} to a convert_hf_to_gguf.py)")
    return path


def check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ServerError(f"{folder}: not an exported model folder (needs config.json and *.safetensors; "
                          "make one with `python -m kd_bundle export`)")


def gguf_path(folder: Path, outtype: str) -> Path:
    """The cached GGUF of `folder`, named by a hash of its weights and config so a changed folder is re-converted."""
    digest = files_sha256([folder / "config.json", *sorted(folder.glob("*.safetensors"))])
    return folder.parent / f"{folder.name}.{digest[:12]}.{outtype}.gguf"


def convert_to_gguf(folder: Path, outtype: str = "auto") -> Path:
    """The GGUF of an exported folder, converted on first use (atomically: a killed conversion leaves nothing)."""
    folder = Path(folder)
    check_model_folder(folder)
    target = gguf_path(folder, outtype)
    if target.is_file():
        return target
    script = converter_script()
    log.info("converting %s to %s with llama.cpp's converter (once per exported folder)", folder, target.name)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    try:
        done = subprocess.run([sys.executable, str(script), str(folder), "--outtype", outtype, "--outfile", partial],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ServerError(f"{folder}: llama.cpp's converter failed ({converter_error(done)}); "
                              "llama.cpp knows the tokenizers of published models, not every locally trained one")
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def converter_error(done: subprocess.CompletedProcess) -> str:
    """The exception line of a failed conversion (its progress bars share stderr), else the exit code."""
    lines = [line.split("\r")[0].strip() for line in done.stderr.splitlines()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return errors[-1] if errors else f"exit code {done.returncode}"


def context_size(folder: Path) -> int:
    """The model's own window, capped at the teacher's (its KV cache is allocated up front)."""
    config = json.loads((folder / "config.json").read_text())
    return min(int(config.get("max_position_embeddings") or N_CTX), N_CTX)


def serve_student(folder: Path, *, served_model_name: str | None = None, host: str = "127.0.0.1",
                  port: int = DEFAULT_PORT, outtype: str = "auto", detach: bool = False) -> ServerInfo:
    """Start the server on `folder` (converted if needed) and return once it answers; stop it with
    `kd_bundle.teacher.server.stop_server(port)`. Without `detach` it also stops when this process dies."""
    folder = Path(folder).resolve()
    gguf = convert_to_gguf(folder, outtype)
    return start_server(served_model_name or folder.name, model=str(gguf), host=host, port=port,
                        backend="llama-cpp", n_ctx=context_size(folder), detach=detach)


def cli(argv: list[str]) -> int:
    """`python -m kd_bundle serve FOLDER`: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m kd_bundle serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder written by `python -m kd_bundle export`")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (the server has no authentication)")
    parser.add_argument("--served-model-name", default=None, help="the model name clients send (default: the "
                        "folder's name)")
    parser.add_argument("--outtype", default="auto", choices=OUTTYPES, help="GGUF weight type (default auto: "
                        "16-bit, bf16 for a bf16 folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        info = serve_student(args.folder, served_model_name=args.served_model_name, host=args.host, port=args.port,
                             outtype=args.outtype)
    except ServerError as exc:
        print(f"python -m kd_bundle serve: error: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    try:
        print(f"serving {args.folder} at base_url={info.base_url} model={info.served_model_name} "
              f"(OpenAI-compatible; log {info.log_file}); Ctrl-C stops it", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        stop_server(info.port)
    print("stopped", flush=True)
    return 0
