"""The same training gives the same adapter bytes in any process, so the store names it by one hash (content
addressing): peft resolves target_modules="all-linear" to a set, whose order followed each process's hash seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.kd_bundle.tiny_student import build_tiny_student

ROOT = Path(__file__).resolve().parents[3]
TRAIN = """
import sys
from pathlib import Path
from kd_bundle.store import _directory_sha256
from kd_bundle.student.model import StudentConfig
from kd_bundle.student.training import SFTConfig, train_adapter
from tests.kd_bundle.tiny_student import tiny_sessions
student = StudentConfig(model=sys.argv[1], max_new_tokens=32)
cfg = SFTConfig(max_steps=2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, valid_sessions=0)
train_adapter(tiny_sessions(), None, None, student, cfg, Path(sys.argv[2]))
print(_directory_sha256(Path(sys.argv[2])))
"""


def test_one_training_one_hash_whatever_the_hash_seed(tmp_path):
    model = build_tiny_student(tmp_path / "tiny")
    hashes = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-c", TRAIN, str(model), str(tmp_path / f"adapter-{seed}")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        hashes.append(done.stdout.strip().splitlines()[-1])
    assert hashes[0] == hashes[1], hashes
