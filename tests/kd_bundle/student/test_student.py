"""Student loading errors, length bucketing, QLoRA/LoRA training on a tiny random Llama; one slow real-SmolLM2 run."""

from __future__ import annotations

import json
import logging
import os
import shutil

import polars as pl
import pytest
import torch

from kd_bundle.store import write_directory
from kd_bundle.student.icl import ICLConfig, build_sft_examples
from kd_bundle.student.model import StudentConfig, StudentModelError, load_student, load_tokenizer
from kd_bundle.student.training import SMOKE, bucket_batches, train_student
from tests.kd_bundle.tiny_student import build_tiny_student, tiny_sessions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_student(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def examples(tiny) -> pl.DataFrame:
    tokenizer = load_tokenizer(StudentConfig(model=str(tiny)))
    return build_sft_examples(tiny_sessions(), None, None, tokenizer, ICLConfig(formats=()), 1024)


def test_missing_model_weightless_folder_and_absent_chat_template_are_clear_errors(tiny, tmp_path):
    with pytest.raises(StudentModelError, match="neither a local folder nor in the local Hugging Face cache"):
        load_tokenizer(StudentConfig(model="nobody/no-such-model"))
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    shutil.copy(tiny / "config.json", weightless / "config.json")
    with pytest.raises(StudentModelError, match="no weights"):
        load_student(StudentConfig(model=str(weightless)))
    untemplated = tmp_path / "untemplated"
    shutil.copytree(tiny, untemplated)
    (untemplated / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((untemplated / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (untemplated / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(StudentModelError, match="no chat template"):
        load_tokenizer(StudentConfig(model=str(untemplated)))


def test_buckets_cover_every_example_once_within_the_budget():
    lengths = [150 + (i * 37) % 400 for i in range(300)] + [2000]  # SFT prompts: a few hundred tokens, one outlier
    batches = bucket_batches(lengths, batch_tokens=4096, max_batch_size=16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 16
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 4096
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded - sum(lengths) < 0.05 * sum(lengths)  # similar lengths share a batch: under 5% padding


def test_qlora_trains_in_4bit_on_cpu_and_saves_a_content_addressed_adapter(tiny, examples, tmp_path):
    student = StudentConfig(model=str(tiny))
    result = train_student(examples, student, SMOKE.model_copy(update={"quantization": "nf4"}), tmp_path / "adapter")
    assert result.quantized and result.steps == 2 and all(loss > 0 for loss in result.losses)
    assert result.train_tokens <= result.padded_tokens and result.tokens_per_second > 0
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "sft_config.json", "student_config.json"} <= files
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny) and adapter_config["r"] == SMOKE.lora_r
    ref = write_directory(result.adapter_dir, "adapter", root=tmp_path / "store")
    assert ref.kind == "adapter" and (ref.path(tmp_path / "store") / "adapter_model.safetensors").exists()
    assert json.loads((result.adapter_dir / "base.json").read_text()) == {"quantized": True, "dtype": "float32"}
    model, _ = load_student(student, ref.path(tmp_path / "store"))  # the base it was trained against: NF4
    assert any("lora" in name for name, _ in model.named_parameters()), "a 4-bit base keeps the adapter beside it"
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    merged, _ = load_student(student.model_copy(update={"load_in_4bit": False}), ref.path(tmp_path / "store"))
    assert not any("lora" in name for name, _ in merged.named_parameters())  # asked for: merged into a plain base
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())


def test_a_cpu_trains_plain_lora_by_default(tiny, examples, tmp_path):
    result = train_student(examples, StudentConfig(model=str(tiny)), SMOKE, tmp_path / "adapter")
    assert SMOKE.quantization == "auto" and not result.quantized
    assert json.loads((result.adapter_dir / "base.json").read_text()) == {"quantized": False, "dtype": "float32"}


def test_plain_lora_is_deterministic_and_learns(tiny, examples, tmp_path):
    cfg = SMOKE.model_copy(update={"quantization": "none", "max_steps": 6, "learning_rate": 3e-3})
    student = StudentConfig(model=str(tiny))
    first = train_student(examples, student, cfg, tmp_path / "a")
    second = train_student(examples, student, cfg, tmp_path / "b")
    assert not first.quantized and first.losses == second.losses
    assert write_directory(first.adapter_dir, "adapter", tmp_path / "s") == write_directory(
        second.adapter_dir, "adapter", tmp_path / "s")  # same data and settings: same adapter hash
    assert min(first.losses[-2:]) < first.losses[0]
    model, _ = load_student(student, first.adapter_dir)  # dtype "auto": the training dtype, whatever this CPU has
    assert next(model.parameters()).dtype == torch.float32
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged: one matmul per layer


def test_validation_keeps_the_best_step_and_stops_after_its_patience(tiny, examples, tmp_path):
    """Validation examples are held-out sessions (here the two test-split ones, built as SFT examples): measured
    before the first step and after every step. A run that never beats the base (a rate too small to move the loss) is
    stopped after `patience` measurements and the base itself (step 0: LoRA B is zero) is kept; a rate that learns
    keeps a later step."""
    from safetensors.torch import load_file

    student = StudentConfig(model=str(tiny))
    held_out = build_sft_examples(tiny_sessions(), None, None, load_tokenizer(student), ICLConfig(formats=()), 1024,
                                  split="test")
    assert held_out.height == 2 and not set(held_out["session_id"]) & set(examples["session_id"])
    hurting = SMOKE.model_copy(update={"quantization": "none", "max_steps": 12, "learning_rate": 1e-12,
                                       "eval_every": 1, "patience": 2})
    bad = train_student(examples, student, hurting, tmp_path / "bad", validation=held_out)
    assert bad.valid_steps[0] == 0 and bad.valid_examples == 2
    assert bad.best_step == 0 and bad.stopped_early and bad.steps == 2, (bad.valid_losses, bad.losses)
    weights = load_file(str(bad.adapter_dir / "adapter_model.safetensors"))
    assert all(float(w.abs().max()) == 0.0 for name, w in weights.items() if "lora_B" in name)  # the base, kept
    curves = json.loads((bad.adapter_dir / "curves.json").read_text())
    assert curves["best_step"] == 0 and curves["valid_steps"] == bad.valid_steps == [0, 1, 2]

    learning = SMOKE.model_copy(update={"quantization": "none", "max_steps": 8, "learning_rate": 3e-3,
                                        "eval_every": 2, "patience": None})
    good = train_student(examples, student, learning, tmp_path / "good", validation=held_out)
    assert good.valid_steps == [0, 2, 4, 6, 8] and good.steps == 8 and not good.stopped_early
    assert good.best_step > 0 and min(good.valid_losses[1:]) < good.valid_losses[0], good.valid_losses
    assert good.best_step == good.valid_steps[good.valid_losses.index(min(good.valid_losses))]

    assert bad.valid_losses[1] == pytest.approx(bad.valid_losses[0], abs=1e-4)  # what "never beats the base" was


def test_early_stopping_restores_the_best_weights():
    from kd_bundle.student.validation import EarlyStopping

    layer = torch.nn.Linear(3, 3)
    layer.bias.requires_grad_(False)  # only trainable tensors are kept (an adapter's LoRA weights)
    first = layer.weight.detach().clone()
    stopping = EarlyStopping(patience=2)
    assert not stopping.record(0, 1.0, layer)
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert not stopping.record(1, 1.5, layer) and stopping.record(2, 1.2, layer)  # two measurements, none better
    stopping.restore_best(layer, last_step=2)
    assert torch.equal(layer.weight, first) and stopping.best_step == 0 and stopping.steps == [0, 1, 2]
    assert not EarlyStopping(patience=None).record(0, 1.0, layer)


def test_early_stopping_by_precision_then_loss():
    """Decoded precision decides; the loss only breaks its ties: a lower loss with worse answers is not kept."""
    from kd_bundle.student.validation import EarlyStopping

    layer = torch.nn.Linear(2, 2)
    stopping = EarlyStopping(patience=3)
    assert not stopping.record(0, 1.0, layer, precision=0.4)
    assert not stopping.record(1, 0.5, layer, precision=0.3)  # the loss fell, the answers got worse
    assert stopping.best_step == 0
    assert not stopping.record(2, 0.9, layer, precision=0.4)  # as good answers, lower loss: kept
    assert stopping.best_step == 2 and (stopping.best_precision, stopping.best_loss) == (0.4, 0.9)
    assert not stopping.record(3, 2.0, layer, precision=0.5) and stopping.best_step == 3
    reasoning = EarlyStopping(patience=None)  # a reasoning adapter: precision alone, no loss
    reasoning.record(0, None, layer, precision=0.2)
    reasoning.record(1, None, layer, precision=0.1)
    assert reasoning.best_step == 0 and reasoning.losses == [] and reasoning.precisions == [0.2, 0.1]
    with pytest.raises(ValueError, match="loss or a precision"):
        reasoning.record(2, None, layer)


def test_decoded_validation_is_the_grids_own_score_of_the_validation_sessions(tiny, tmp_path):
    """train_adapter decodes the validation sessions at every measurement through the grid's prompt, grammar,
    parser and scorer: its step-0 precision is what predict_sessions + score_predictions give the base on them, its
    kept step's precision what they give the saved adapter, and the kept step is the best precision (ties: loss)."""
    from kd_bundle.evaluation.metrics import score_predictions
    from kd_bundle.student.generate import predict_sessions
    from kd_bundle.student.training import train_adapter

    sessions = tiny_sessions().with_columns(
        split=pl.when(pl.col("split") == "test").then(pl.lit("valid")).otherwise(pl.col("split")))
    valid = sessions.filter(pl.col("split") == "valid")
    student = StudentConfig(model=str(tiny), dtype="float32", max_new_tokens=48)
    # a rate at which the tiny student's answers get better, then worse again while its loss keeps falling
    cfg = SMOKE.model_copy(update={"quantization": "none", "max_steps": 6, "learning_rate": 1e-2, "eval_every": 2,
                                   "patience": None})
    assert cfg.select_by == "strict_precision"
    result = train_adapter(sessions, None, None, student, cfg, tmp_path / "adapter")
    assert result.valid_steps == [0, 2, 4, 6] and len(result.valid_precisions) == len(result.valid_losses) == 4
    kept = max(range(4), key=lambda i: (result.valid_precisions[i], -result.valid_losses[i]))
    assert result.best_step == result.valid_steps[kept], (result.valid_precisions, result.valid_losses)

    def grid_score(adapter):
        predictions = predict_sessions(sessions, None, student, ICLConfig(formats=()), adapter, split="valid")
        return score_predictions(predictions, valid)["strict_precision"]
    assert result.valid_precisions[0] == pytest.approx(grid_score(None), abs=1e-5)
    assert result.valid_precisions[kept] == pytest.approx(grid_score(result.adapter_dir), abs=1e-5)
    curves = json.loads((result.adapter_dir / "curves.json").read_text())
    assert curves["valid_precisions"] == result.valid_precisions

    by_loss = train_adapter(sessions, None, None, student, cfg.model_copy(update={"select_by": "loss"}),
                            tmp_path / "by-loss")
    assert by_loss.valid_precisions == [] and by_loss.valid_losses == result.valid_losses  # the same training
    assert by_loss.best_step == by_loss.valid_steps[by_loss.valid_losses.index(min(by_loss.valid_losses))]
    # the step the loss keeps writes worse answers than the one precision keeps
    assert max(result.valid_precisions) > result.valid_precisions[result.valid_steps.index(by_loss.best_step)]


def test_the_validation_split_is_sampled_and_the_test_split_never(tiny):
    from kd_bundle.student.validation import validation_sessions

    sessions = tiny_sessions().with_columns(
        split=pl.when(pl.col("session_id") >= 5).then(pl.lit("valid")).otherwise(pl.col("split")))
    sessions = pl.concat([sessions, tiny_sessions().filter(pl.col("split") == "test").with_columns(
        session_id=pl.col("session_id") + 100)])
    picked = validation_sessions(sessions, limit=3, seed=0)
    assert picked.height == 3 and set(picked["split"]) == {"valid"}
    assert picked["session_id"].is_sorted() and picked.equals(validation_sessions(sessions, limit=3, seed=0))
    assert validation_sessions(sessions, limit=0, seed=0).height == 0


def test_checkpointing_and_autocast_follow_the_hardware(tiny, examples, tmp_path, monkeypatch):
    from transformers import AutoConfig

    from kd_bundle.student import compute

    smollm2_like = AutoConfig.for_model("llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    needed = compute.activation_bytes(smollm2_like, 1024, 4)
    assert 2.5e9 < needed < 4e9  # measured 3.4 GB (5.7 GB without checkpointing, 2.3 GB with)
    monkeypatch.setattr(compute, "free_memory_bytes", lambda device: 4 * needed)
    assert not compute.wants_checkpointing("auto", smollm2_like, 1024, "cpu", 4)
    monkeypatch.setattr(compute, "free_memory_bytes", lambda device: needed)
    assert compute.wants_checkpointing("auto", smollm2_like, 1024, "cpu", 4)
    assert compute.wants_checkpointing(True, smollm2_like, 1, "cpu", 4) and not compute.wants_checkpointing(
        False, smollm2_like, 10**9, "cpu", 4)
    monkeypatch.setattr(compute, "cpu_bf16", lambda: (True, "native"))
    assert compute.autocast_dtype("auto", "cpu", torch.float32) == torch.bfloat16
    assert compute.autocast_dtype("auto", "cpu", torch.bfloat16) is None
    assert compute.autocast_dtype("none", "cpu", torch.float32) is None
    monkeypatch.setattr(compute, "free_memory_bytes", lambda device: 1)  # even the tiny student's batch does not fit
    result = train_student(examples, StudentConfig(model=str(tiny)), SMOKE.model_copy(
        update={"gradient_checkpointing": "auto", "autocast": "auto", "quantization": "none"}), tmp_path / "adapter")
    assert result.gradient_checkpointing and result.autocast == "bfloat16" and all(loss > 0 for loss in result.losses)
    monkeypatch.setattr(compute, "cpu_bf16", lambda: (False, "emulated"))
    assert compute.autocast_dtype("auto", "cpu", torch.float32) is None


def test_under_autocast_a_small_lora_delta_survives_the_forward_pass(tiny):
    """peft adds the LoRA branch to a bf16 base output under autocast: a delta far below the output's size rounds
    away, and training would learn from a forward pass without it. With fp32 sums it is there, as in fp32."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from kd_bundle.student import compute
    from kd_bundle.student.model import load_base

    base, _ = load_base(StudentConfig(model=str(tiny), dtype="float32"), quantize=False, training=True)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules="all-linear", init_lora_weights=False))
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(1e-3)  # a delta ~1e-3 of the layer's output, as early in a run
    x = torch.randn(16, layer.get_base_layer().in_features, generator=torch.Generator().manual_seed(0))

    def delta(autocast: bool) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return layer(x).float() - layer.get_base_layer()(x).float()

    exact = delta(False)
    size = float(exact.abs().mean())
    assert size > 0
    rounded = delta(True)  # the sum in bf16: most of the delta is gone
    assert float((rounded - exact).abs().mean()) > 0.3 * size
    assert compute.keep_lora_sums_fp32(model) > 0
    kept = delta(True)
    assert float((kept - exact).abs().mean()) < 0.05 * size  # only the bf16 rounding of the delta's own matmuls
    assert layer(x).dtype == torch.float32  # outside autocast the hooks change nothing (decoding keeps the dtype)


def test_a_failed_4bit_load_falls_back_to_lora_with_a_warning(tiny, examples, tmp_path, monkeypatch, caplog):
    import transformers

    def broken(*args, **kwargs):
        raise RuntimeError("no bitsandbytes backend for this device")

    monkeypatch.setattr(transformers, "BitsAndBytesConfig", broken)
    with caplog.at_level(logging.WARNING, logger="kd_bundle.student"):
        result = train_student(examples, StudentConfig(model=str(tiny)), SMOKE.model_copy(
            update={"quantization": "nf4"}), tmp_path / "adapter")
    assert not result.quantized and "using plain LoRA" in caplog.text


def test_training_needs_examples(tiny, tmp_path):
    with pytest.raises(ValueError, match="non-empty frame"):
        train_student(pl.DataFrame({"session_id": [], "prompt": [], "completion": []}),
                      StudentConfig(model=str(tiny)), SMOKE, tmp_path)


@pytest.mark.slow
def test_real_smollm2_icl_sft_and_sft_icl_on_real_sessions_are_scored(tmp_path):
    """The shipped SmolLM2-135M-Instruct on 30 real training and 3 test sessions: ICL, 2 QLoRA steps, SFT+ICL."""
    from kd_bundle.config import DataConfig, settings
    from kd_bundle.data.sessions import load_sessions
    from kd_bundle.evaluation.metrics import score_predictions
    from kd_bundle.student.generate import predict_sessions
    from kd_bundle.student.retrieval import RetrievalConfig, build_index, embed_sessions, retrieve_knowledge
    from kd_bundle.student.training import train_adapter

    data = DataConfig(domain="electronic", max_train_sessions=30, max_test_sessions=3)
    sessions = load_sessions(data, settings().data_root).filter(pl.col("split") != "valid")
    test = sessions.filter(pl.col("split") == "test")
    cfg = RetrievalConfig(method="tfidf", k=2)
    embeddings = embed_sessions(sessions, cfg)
    retrieved = retrieve_knowledge(sessions, embeddings, build_index(embeddings, sessions), {"raw": sessions}, cfg)
    student = StudentConfig(max_new_tokens=64, batch_size=3)
    icl = ICLConfig(formats=("raw",), demonstrations=1)

    icl_scores = score_predictions(predict_sessions(sessions, retrieved, student, icl), test)
    sft = SMOKE.model_copy(update={"batch_tokens": 512, "lora_r": 8, "lora_alpha": 16, "quantization": "nf4"})
    result = train_adapter(sessions, retrieved, None, student, sft, tmp_path / "adapter")
    both_scores = score_predictions(predict_sessions(sessions, retrieved, student, icl, result.adapter_dir), test)

    assert result.quantized and result.steps == 2 and result.examples == 30
    assert 0 < result.losses[0] < 5  # a pretrained instruct model: far below ln(49152) = 10.8
    for scores in (icl_scores, both_scores):
        assert scores["n_sessions"] == 3 and scores["n_scored"] + scores["n_failed"] == 3
        assert 0 <= scores["strict_precision"] <= 1


def test_completion_only_logits_give_the_models_own_loss(tiny):
    import torch

    from kd_bundle.student.batches import collate as _collate
    from kd_bundle.student.batches import completion_loss
    from kd_bundle.student.model import load_student

    model, _ = load_student(StudentConfig(model=str(tiny)))
    rows = [([5, 6, 7, 8, 9, 10], [-100, -100, -100, -100, 9, 10]), ([11, 12, 13], [-100, 12, 13])]
    inputs = _collate(rows, pad_id=0, device="cpu")
    with torch.no_grad():
        ours = completion_loss(model, inputs)
        full = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     position_ids=inputs["position_ids"], labels=inputs["labels"]).loss
        alone = model(input_ids=torch.tensor([[11, 12, 13]]), labels=torch.tensor([[-100, 12, 13]])).logits
        padded = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    assert torch.allclose(ours, full, atol=1e-5)
    assert torch.allclose(padded[1, -3:], alone[0], atol=1e-4)  # left padding with position ids changes nothing


def test_auto_dtype_is_bf16_where_the_cpu_has_a_bf16_path_and_fp32_for_cpu_training(tiny, caplog):
    import torch

    from kd_bundle.student.model import cpu_bf16, resolve_dtype

    fast, why = cpu_bf16()
    assert resolve_dtype("auto", "cpu") == ((torch.bfloat16 if fast else torch.float32), why)
    assert resolve_dtype("auto", "cpu", training=True)[0] == torch.float32
    assert resolve_dtype("auto", "cuda")[0] == torch.bfloat16
    assert resolve_dtype("float16", "cpu")[0] == torch.float16
    with caplog.at_level(logging.INFO, logger="kd_bundle.student"):
        model, _ = load_student(StudentConfig(model=str(tiny)))
    assert next(model.parameters()).dtype == resolve_dtype("auto", "cpu")[0]
    assert f"in {str(resolve_dtype('auto', 'cpu')[0]).removeprefix('torch.')} ({why})" in caplog.text


def test_an_adapter_trained_in_fp32_applies_to_the_auto_dtype_inference_base(tiny, examples, tmp_path):
    from kd_bundle.student.generate import generate_texts

    result = train_student(examples, StudentConfig(model=str(tiny)), SMOKE, tmp_path / "adapter")
    cfg = StudentConfig(model=str(tiny), max_new_tokens=64)
    model, tokenizer = load_student(cfg, result.adapter_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "phone case"}], tokenize=False,
                                           add_generation_prompt=True)
    [text] = generate_texts(model, tokenizer, [prompt], cfg, n_items=[3])
    assert text.startswith("Bundles: {'bundle1': [")
