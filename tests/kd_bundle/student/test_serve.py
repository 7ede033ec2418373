"""Serve: an exported student (SmolLM2 with a zero-initialised LoRA, exported like a trained one) behind llama.cpp's
OpenAI-compatible server answers a real session's bundle request through the `openai` client under the answer
schema, and kd-bundle's own teacher client uses it as a teacher; Ctrl-C stops it. The tiny random Llama of the other
tests cannot be served: llama.cpp's converter knows the tokenizers of published models only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from kd_bundle.__main__ import main
from kd_bundle.config import DataConfig, settings
from kd_bundle.data.parsing import parse_bundles
from kd_bundle.data.sessions import load_sessions
from kd_bundle.knowledge.reflection import detect_prompt
from kd_bundle.student.export import CardFacts, export_student
from kd_bundle.student.serve import CONVERTER_ENV
from kd_bundle.teacher import TeacherClient, TeacherConfig
from kd_bundle.teacher.answer_schema import detection_format
from kd_bundle.teacher.server import is_listening

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def exported_smollm2(tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kd_bundle.models import resolve_model_path

    root = tmp_path_factory.mktemp("serve")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2"), dtype=torch.bfloat16),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # B = 0: the base's answers
    model.peft_config["default"].base_model_name_or_path = "smollm2"  # as training records it
    model.save_pretrained(root / "adapter")
    (root / "adapter" / "base.json").write_text(json.dumps({"quantized": False, "dtype": "bfloat16"}))
    return export_student(root / "adapter", root / "student", CardFacts(teacher="smollm2"))


def real_session() -> list[str]:
    sessions = load_sessions(DataConfig(domain="electronic", max_test_sessions=1), settings().data_root)
    return sessions.filter(sessions["split"] == "test")["titles"][0].to_list()


@pytest.mark.slow
def test_the_served_student_answers_under_the_schema_through_openai_and_as_kd_bundles_teacher(
        exported_smollm2, tmp_path, monkeypatch):
    """~110 s on 2 busy cores: export (~30 s), one conversion to GGUF (~30 s), two schema-held answers."""
    from openai import OpenAI

    port = free_port()
    env = {**os.environ, "KD_STORE": str(tmp_path / "store"), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "kd_bundle", "serve", str(exported_smollm2), "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line, deadline = "", time.monotonic() + 300
        while "base_url=" not in line and time.monotonic() < deadline and server.poll() is None:
            line = server.stdout.readline()
        assert "base_url=" in line, f"serve did not come up: {line!r} (exit {server.poll()})"
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        base_url, model = fields["base_url"], fields["model"]
        assert base_url == f"http://127.0.0.1:{port}/v1" and model == "student"

        titles = real_session()
        response_format = detection_format(len(titles))
        schema = response_format["json_schema"]["schema"]
        prompt = [{"role": "user", "content": detect_prompt(titles)}]
        client = OpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=300)
        reply = client.chat.completions.create(model=model, messages=prompt, max_tokens=128, temperature=0.0,
                                               response_format=response_format)
        jsonschema.validate(json.loads(reply.choices[0].message.content), schema)

        monkeypatch.setenv("KD_TEACHER_BASE_URL", base_url)  # the student as the next round's teacher
        with TeacherClient(TeacherConfig(model=model, max_tokens=128), cache_path=tmp_path / "cache.sqlite") as teacher:
            answer = teacher.complete(prompt, response_format=response_format)
        assert answer.structured and not answer.from_cache and not answer.truncated
        jsonschema.validate(json.loads(answer.text), schema)
        assert parse_bundles(answer.text, len(titles)).bundles

        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0 and "stopped" in server.stdout.read()
        assert not is_listening("127.0.0.1", port)
        assert len(list(exported_smollm2.parent.glob("student.*.auto.gguf"))) == 1  # cached beside the folder
    finally:
        if server.poll() is None:
            server.kill()


def test_serving_a_folder_that_is_no_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    assert main(["serve", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an exported model folder" in err[0], err


def test_a_missing_converter_is_one_line_naming_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path / "nowhere" / "convert_hf_to_gguf.py"))
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert main(["serve", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make install" in err[0] and "nowhere" in err[0], err
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".gguf" or "partial" in p.name] == []


def test_a_folder_whose_tokenizer_llama_cpp_does_not_know_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """The tiny random Llama's locally trained tokenizer (~20 s: the converter imports torch and transformers)."""
    from tests.kd_bundle.tiny_student import build_tiny_student

    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    folder = build_tiny_student(tmp_path / "tiny")
    assert main(["serve", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BPE pre-tokenizer was not recognized" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "tiny"]  # no GGUF, no partial file
