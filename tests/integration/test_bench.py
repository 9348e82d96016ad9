"""``make bench-quick`` runs with the tests: every figure is taken, errors fail, speed never does.

The quick run is ``bench/run.py --quick`` at small sizes, against the same servers as the other
tests. A benchmark that cannot take a figure (a worker that does not start, a replay that fails, a
query that breaks) fails here; a slow figure on a noisy machine does not.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.before import BASE
from bench.run import TARGETS
from tests.servers import PostgresServer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1200)
def test_quick_bench_takes_every_figure(
    tmp_path: Path, postgres: PostgresServer, redis_url: str
) -> None:
    out = tmp_path / "results-quick.json"
    env = {
        **os.environ,
        "RECALL_TEST_POSTGRES_DSN": postgres.admin_dsn,
        "RECALL_TEST_REDIS_URL": redis_url,
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1100,
    )  # fmt: skip
    failed = f"bench-quick failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, failed
    print(done.stdout)  # the table, for whoever reads the CI log with -s

    results = json.loads(out.read_text())
    for key, _target, _check in TARGETS:
        value = results[key]
        assert isinstance(value, int | float), (key, value)
        assert math.isfinite(value), (key, value)
        assert value >= 0, (key, value)
        assert key in done.stdout, f"{key} missing from the printed table"
    rates = [key for key, *_ in TARGETS if key.endswith("_per_s")]
    assert all(results[key] > 0 for key in rates), {key: results[key] for key in rates}
    assert results["run"]["quick"] is True
    ab = results["ab"]  # the A/B ratios come from runs of both sides, each side its own code
    assert ab["before"]["commit"].startswith(BASE), ab["before"]
    assert Path(ab["before"]["tree"]).is_dir()
    for figure, runs in ab["runs"].items():
        for side, values in runs.items():
            assert len(values) == ab["pairs"], (figure, side, values)
            assert all(value > 0 for value in values), (figure, side, values)
