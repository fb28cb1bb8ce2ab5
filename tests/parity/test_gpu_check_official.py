"""benchmarks/gpu_check.py's official-vs-ours check, dry run on the CPU (2.1 tiny at 128²): the code that will
drive the official predictor on a GPU runs here too, so it cannot rot while no GPU is lent."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_the_official_beside_ours(tmp_path):
    args = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path)]
    args += ["--device", "cpu", "--quick", "--only", "correctness", "--budget", "1200"]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]["correctness"]["rows"]
    official = rows["official vs ours"]
    assert official["status"] == "pass", official
    assert official["max_abs_diff"] <= 1e-3 and official["masks_equal"]
