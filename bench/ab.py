"""This code against an earlier commit's, in one run: the ``ab`` part of bench/run.py.

Issue 16's figures (``make bench-ab``; docs/PERFORMANCE.md says how each is taken). The earlier
commit (bench/before.py, ``BASE`` unless ``--before REV``) runs from its own tree with the same
interpreter and libraries. Runs alternate, A B A B, so that whatever else loads the machine falls
on both sides alike; each figure is the median of its side's runs:

- ``replay_dry_x_before``, ``replay_apply_x_before``: events/s of ``recall replay`` (dry, then
  applied into a fresh PostgreSQL database migrated by the side's own code) now over before, wall
  time of the whole command as bench/replay.py takes it, on the same history;
- ``engine_decide_x_before``: each side's own ``bench/engine.py`` (same arguments), its
  ``engine_decide_us`` now over before;
- ``replay_jobs2_x_jobs1``: this code's dry replay with ``--jobs 2`` over ``--jobs 1``, on the
  full bench's (larger) history;
- ``replay_dry_x_parse``: this code's dry replay over merely reading the same file and
  ``orjson.loads`` of each line (a subprocess of the same interpreter, also wall time of the
  whole command), taken between the dry runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.before import BASE, Tree, now, prepare, tree
from bench.replay import history, run
from tests.servers import PostgresServer

#: Reading the history and decoding each line, nothing else: the floor under a replay.
PARSE = """\
import sys, orjson
lines = 0
with open(sys.argv[1], "rb") as lines_in:
    for line in lines_in:
        orjson.loads(line)
        lines += 1
print(lines)
"""


def replay_rate(side: Tree, path: Path, *args: str, env: dict[str, str] | None = None) -> float:
    """Events/s of one ``recall replay`` of ``path`` by ``side``'s code."""
    done, wall, _ = run([str(path), *args], env or {}, code=side.root, memory=False)
    return float(done["summary"]["events"]) / wall


def applied_rate(side: Tree, path: Path, server: PostgresServer) -> float:
    """Events/s of one applied replay into a fresh database, migrated by ``side``'s own code."""
    url = server.create_database()
    try:
        side.run("-m", "worker", "db", "upgrade", env=side.env(RECALL_DATABASE_URL=url))
        env = {"RECALL_DATABASE_URL": url, "RECALL_BROKER_URL": "redis://127.0.0.1:1/0"}
        return replay_rate(side, path, env=env)
    finally:
        server.drop_database(url)


def parse_rate(side: Tree, path: Path) -> float:
    """Lines/s of reading ``path`` and ``orjson.loads`` of each line, in a fresh interpreter."""
    started = time.perf_counter()
    lines = int(side.run("-c", PARSE, str(path)))
    return lines / (time.perf_counter() - started)


def engine_us(side: Tree, args: list[str]) -> float:
    """``side``'s own bench/engine.py: the median cost of one decision, in microseconds."""
    out = side.run(str(Path("bench") / "engine.py"), *args)
    name, value = out.strip().splitlines()[-1].split()
    assert name == "engine_decide_us", out
    return float(value)


def alternate(
    pairs: int, label: str, unit: str, runs: dict[str, Callable[[], float]]
) -> dict[str, list[float]]:
    """``pairs`` rounds of every run in ``runs``, in order; each figure printed as it comes."""
    taken: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(1, pairs + 1):
        shown = []
        for name, measure_one in runs.items():
            taken[name].append(measure_one())
            shown.append(f"{name} {taken[name][-1]:,.1f}")
        print(f"ab {label:<8} {round_}: {', '.join(shown)} {unit}", flush=True)
    medians = (f"{name} {statistics.median(values):,.1f}" for name, values in taken.items())
    print(f"ab {label:<8} median: {', '.join(medians)} {unit}", flush=True)
    return taken


def warm(path: Path) -> None:
    """Read ``path`` once, so that the first measured run does not pay for the disk."""
    with path.open("rb") as file:
        while file.read(1 << 20):
            pass


def measure(
    events: int, jobs_events: int, pairs: int, engine_args: list[str], rev: str = BASE
) -> dict[str, Any]:
    """Every A/B figure: replays on the history of about ``events`` (``jobs_events`` for the jobs
    ratio), ``pairs`` rounds each."""
    started = time.monotonic()
    before, current = tree(rev), now()
    for side in (before, current):
        prepare(side)
    path, jobs_path = history(events), history(jobs_events)
    warm(path)
    warm(jobs_path)

    dry = alternate(pairs, "dry", "events/s", {
        "before": partial(replay_rate, before, path, "--dry-run"),
        "now": partial(replay_rate, current, path, "--dry-run"),
        "parse": partial(parse_rate, current, path),
    })  # fmt: skip
    server = PostgresServer()
    try:
        applied = alternate(pairs, "applied", "events/s", {
            "before": partial(applied_rate, before, path, server),
            "now": partial(applied_rate, current, path, server),
        })  # fmt: skip
    finally:
        server.stop()
    engine = alternate(pairs, "engine", "us", {
        "before": partial(engine_us, before, engine_args),
        "now": partial(engine_us, current, engine_args),
    })  # fmt: skip
    jobs = alternate(pairs, "jobs", "events/s", {
        "jobs1": partial(replay_rate, current, jobs_path, "--dry-run", "--jobs", "1"),
        "jobs2": partial(replay_rate, current, jobs_path, "--dry-run", "--jobs", "2"),
    })  # fmt: skip

    median = statistics.median
    figures = {"replay_dry_per_s": dry, "replay_apply_per_s": applied,
               "engine_decide_us": engine, "replay_jobs_per_s": jobs}  # fmt: skip
    results: dict[str, Any] = {
        "replay_dry_x_before": round(median(dry["now"]) / median(dry["before"]), 3),
        "engine_decide_x_before": round(median(engine["now"]) / median(engine["before"]), 3),
        "replay_apply_x_before": round(median(applied["now"]) / median(applied["before"]), 3),
        "replay_jobs2_x_jobs1": round(median(jobs["jobs2"]) / median(jobs["jobs1"]), 3),
        "replay_dry_x_parse": round(median(dry["now"]) / median(dry["parse"]), 3),
        "ab": {
            "before": {"rev": rev, "commit": before.commit, "tree": str(before.root)},
            "now": {"commit": current.commit},
            "pairs": pairs,
            "events_file": str(path),
            "jobs_events_file": str(jobs_path),
            "engine_args": engine_args,
            "medians": {
                key: {name: round(median(values), 1) for name, values in taken.items()}
                for key, taken in figures.items()
            },
            "runs": {
                key: {name: [round(value, 1) for value in values] for name, values in taken.items()}
                for key, taken in figures.items()
            },
            "seconds": round(time.monotonic() - started),
        },
    }
    return results
