"""A bad data file through a flow entry point: one line on stderr naming the file, session and rows, exit 2,
and the full trace in the log file that line names (issue 12: it used to be ~150 lines and three tracebacks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from kd_bundle.config import settings

ROOT = Path(__file__).resolve().parents[2]
FOOD_FILES = ["aicl/split.csv", "aicl/item_titles.csv", "aicl/session_bundles_dedup.csv", "item_categories.csv",
              "item_idx_mapping.csv"]


def test_bad_data_through_flows_baselines_is_one_line_and_exit_2(isolated_store):
    data_root = isolated_store / "data"
    food = data_root / "food"
    (food / "aicl").mkdir(parents=True)
    for name in FOOD_FILES:
        (food / name).symlink_to(settings().data_root / "food" / name)
    lines = (settings().data_root / "food" / "aicl" / "session_items.csv").read_text().split("\n")
    assert lines[2].startswith("1,0,2,")
    lines[2] = lines[2].replace("1,0,2,", "1,0,1,", 1)  # session 1 lists position 1 twice
    (food / "aicl" / "session_items.csv").write_text("\n".join(lines))

    env = {**os.environ, "KD_DATA_ROOT": str(data_root), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(isolated_store / "prefect-results")}
    run = subprocess.run([sys.executable, "-m", "flows.baselines", "--domain", "food"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=False)

    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, run.stderr
    found = re.fullmatch(r"python -m flows\.baselines: error: (.+session_items\.csv): rows 0 and 1: "
                         r"session 1 has position 1 twice \(full trace: (.+\.log)\)", errors[0])
    assert found, errors[0]
    assert found.group(1) == str(food / "aicl" / "session_items.csv")
    log = Path(found.group(2))
    assert log.parent == isolated_store / "store" / ".logs"
    trace = log.read_text()
    assert "Traceback" in trace and "DataError: " in trace and "session 1 has position 1 twice" in trace
