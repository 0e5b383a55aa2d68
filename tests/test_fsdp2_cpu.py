"""FSDP2 (`fully_shard`) on 2 CPU processes over gloo trains the model like one unsharded process."""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("fsdp2_worker.py")


def _run(argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parents[1]))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fully_shard_matches_single_process():
    single = _run([sys.executable, str(WORKER)])
    sharded = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", str(WORKER), "fsdp2"])
    assert sharded["world"] == 2
    for a, b in zip(single["losses"], sharded["losses"]):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (single["losses"], sharded["losses"])
    assert single["losses"][-1] < single["losses"][0]
    assert abs(single["checksum"] - sharded["checksum"]) < 1e-3 * single["checksum"]
