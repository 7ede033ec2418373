"""Export: a tiny random Llama with a LoRA (non-zero, so merging matters) becomes a folder that loads with
AutoModelForCausalLM alone, gives base+adapter's logits, keeps the chat template, and carries a card naming what
made it; bad input is one line, and an occupied folder is never written into."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.__main__ import main
from kd_bundle.evaluation.results import result_row
from kd_bundle.manifest import write_with_manifest
from kd_bundle.report.bootstrap import interval, session_arrays
from kd_bundle.report.student_card import facts_from_results
from kd_bundle.student.export import CardFacts, ExportError, export_student
from tests.kd_bundle.tiny_student import build_tiny_student

DATA_HASH = "d" * 64


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> tuple[Path, Path]:
    """(base folder, adapter folder): LoRA on q/k/v/o with random B, so the adapter changes the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("export")
    base = build_tiny_student(root / "base")
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                      init_lora_weights=False))
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    (adapter / "base.json").write_text(json.dumps({"quantized": False, "dtype": "float32"}))
    return base, adapter


def results_table(path: Path, rows: list[dict], manifest: bool = True) -> Path:
    """A results Parquet of student rows with per-session values, published with a manifest like a flow's."""
    frames = []
    for i, extra in enumerate(rows):
        frames.append(result_row(
            domain="electronic", rq="rq3", method="student", knowledge_format="rules", utilization="sft",
            precision=0.4, recall=0.5, coverage=0.6, strict_precision=0.3, strict_recall=0.2, strict_coverage=0.1,
            n_sessions=4, n_scored=3, n_failed=0, train_steps=12 + i, best_step=8, valid_loss=1.5 - 0.1 * i,
            train_sessions=40, rule_count=17, knowledge_tokens=900,
            session_ids=[1, 2, 3, 4], session_scored=[True, True, True, False],
            session_precision=[1.0, 0.5, 0.0, 0.0], session_recall=[1.0, 0.0, 0.5, 0.0],
            session_hits=[2, 1, 0, 0], session_coverage_sum=[1.0, 0.5, 0.0, 0.0],
            session_strict_recall=[1.0, 0.0, 0.0, 0.0], session_strict_coverage=[0.5, 0.0, 0.0, 0.0]))
        frames[-1] = frames[-1].with_columns(**{k: pl.lit(v) for k, v in extra.items()})
    staged = path.with_suffix(".raw.parquet")
    pl.concat(frames).write_parquet(staged if manifest else path)
    if manifest:
        write_with_manifest(staged, path, {"kd_bundle_commit": "abc1234", "data_sha256": DATA_HASH})
    return path


def logits(model, tokenizer):
    import torch

    ids = tokenizer("phone case black usb charger cable", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_the_export_loads_alone_and_gives_base_plus_adapter_logits(tiny_adapter, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = tiny_adapter
    out = export_student(adapter, tmp_path / "student", CardFacts(teacher="gpt-test"))

    exported = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(base)
    expected = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter), tokenizer)
    got = logits(exported, tokenizer)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, logits(plain, tokenizer), atol=1e-3)  # the adapter is in the weights
    chat = [{"role": "user", "content": "which products go together?"}]
    prompt = {"tokenize": False, "add_generation_prompt": True}
    assert tokenizer.apply_chat_template(chat, **prompt) == AutoTokenizer.from_pretrained(base).apply_chat_template(
        chat, **prompt)
    assert sorted(p.name for p in (out / "adapter").iterdir()) == sorted(p.name for p in adapter.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_the_card_names_base_knowledge_data_teacher_training_and_metrics_with_intervals(tiny_adapter, tmp_path):
    from huggingface_hub import ModelCard

    base, adapter = tiny_adapter
    results = results_table(tmp_path / "results.parquet", [{}, {}])
    facts = facts_from_results(results, 1)
    out = export_student(adapter, tmp_path / "student", CardFacts(**facts, teacher="gpt-test"))

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == str(base) and card.data.library_name == "transformers"
    assert "kd-bundle" in card.data.tags
    row = pl.read_parquet(results).row(1, named=True)
    ci = interval(session_arrays([row])[1])
    for needed in [DATA_HASH, "abc1234", "gpt-test", "Knowledge format: rules", "rule_count 17", "13 steps",
                   f"{row['valid_loss']:.4g}", "Test (4 sessions",
                   f"| precision | {ci['precision']:.4g} | [{ci['precision_lo']:.4g}, {ci['precision_hi']:.4g}] |"]:
        assert needed in card.text, needed
    recorded = json.loads((out / "kd_export.json").read_text())
    assert recorded["test_metrics"] == pytest.approx(ci) and recorded["base_model"] == str(base)


def test_an_occupied_folder_is_refused_and_left_as_it_was(tiny_adapter, tmp_path):
    _, adapter = tiny_adapter
    out = tmp_path / "student"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_student(adapter, out, CardFacts())
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and len(list(tmp_path.iterdir())) == 1


def test_cli_exports_an_adapter_with_a_results_row(tiny_adapter, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    _, adapter = tiny_adapter
    results = results_table(tmp_path / "results.parquet", [{}])
    out = tmp_path / "student"
    assert main(["export", "--adapter", str(adapter), "--results", str(results), "--row", "0",
                 "--out", str(out)]) == 0
    assert f"serve it with: python -m kd_bundle serve {out}" in capsys.readouterr().out
    assert json.loads((out / "kd_export.json").read_text())["source"] == f"{results} row 0"


def test_cli_best_takes_the_lowest_valid_loss_row_and_its_stored_adapter(tiny_adapter, tmp_path, monkeypatch):
    import shutil

    store = tmp_path / "store"
    monkeypatch.setenv("KD_STORE", str(store))
    _, adapter = tiny_adapter
    shutil.copytree(adapter, store / "adapter" / ("a" * 64))
    results = results_table(tmp_path / "results.parquet",
                            [{"adapter_sha256": "b" * 64, "valid_loss": 2.0}, {"adapter_sha256": "a" * 64},
                             {"adapter_sha256": None, "valid_loss": 0.1}])  # no adapter: cannot be exported
    out = tmp_path / "student"
    assert main(["export", "--best", str(results), "--out", str(out)]) == 0
    facts = json.loads((out / "kd_export.json").read_text())
    assert facts["source"] == f"{results} row 1" and facts["valid_loss"] == pytest.approx(1.4)


@pytest.mark.parametrize("case, message", [
    ("no-column", "no adapter_sha256 column"),
    ("bad-row", "no row 5 (the table has 1 rows"),
    ("not-adapter", "not a peft adapter folder"),
])
def test_cli_bad_input_is_one_line(case, message, tiny_adapter, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    _, adapter = tiny_adapter
    results = results_table(tmp_path / "results.parquet", [{}], manifest=False)
    if case == "no-column":  # a table written before results rows recorded their adapter
        pl.read_parquet(results).drop("adapter_sha256").write_parquet(results)
    argv = {"no-column": ["--best", str(results)],
            "bad-row": ["--adapter", str(adapter), "--results", str(results), "--row", "5"],
            "not-adapter": ["--adapter", str(tmp_path)]}[case]
    assert main(["export", *argv, "--out", str(tmp_path / "student")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "student").exists()


def test_an_nf4_trained_adapter_is_merged_into_its_nf4_base_dequantized(tiny_adapter, tmp_path):
    """The weights the adapter met in training (bitsandbytes NF4, CPU backend), not the full-precision base."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kd_bundle.student.model import StudentConfig, load_base

    base, trained = tiny_adapter
    adapter = shutil.copytree(trained, tmp_path / "adapter")
    (adapter / "base.json").write_text(json.dumps({"quantized": True, "dtype": "float32"}))
    out = export_student(adapter, tmp_path / "student", CardFacts())

    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / "kd_export.json").read_text())["merged_into"] == "NF4, dequantized to float32"
    tokenizer = AutoTokenizer.from_pretrained(out)
    got = logits(AutoModelForCausalLM.from_pretrained(out), tokenizer)
    nf4, quantized = load_base(StudentConfig(model=str(base), dtype="float32"), quantize=True)
    assert quantized
    as_trained = logits(PeftModel.from_pretrained(nf4, adapter), tokenizer)
    on_plain = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter), tokenizer)
    assert (got - as_trained).abs().max() < 0.1 * (got - on_plain).abs().max()
    assert torch.allclose(got, as_trained, atol=1e-2)
