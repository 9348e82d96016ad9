"""Replay throughput and peak memory on a generated history (``make bench-replay``).

Generates (once, cached under bench/data/) about EVENTS call results, with booked callbacks, then
runs ``recall replay --dry-run`` and an applied replay into a throwaway PostgreSQL database, each
in its own process, under the bench's rules (bench/rules.toml: the shipped defaults with per-day
and lead caps and closed dates), and prints events/s and peak memory (the PSS of all its
processes) for each.
Figures go to bench/results-replay.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import PostgresServer  # noqa: E402  (path set just above)
from worker.replay.sample import iter_generate, write_jsonl  # noqa: E402
from worker.store.database import upgrade  # noqa: E402

NOW = "2026-06-01T00:00:00+00:00"
#: The rules every replay of the bench decides with (merged over the shipped defaults).
RULES = ROOT / "bench" / "rules.toml"


def history(events: int) -> Path:
    """A cached generated file of about ``events`` events (4.2 events per lead), with booked
    callbacks."""
    path = ROOT / "bench" / "data" / f"history-callbacks-{events}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        leads = max(1, int(events / 4.2))
        start = datetime(2026, 3, 2, tzinfo=UTC)
        generated = iter_generate(seed=7, leads=leads, start=start, days=28, callbacks=True)
        count = write_jsonl(generated, path)
        print(f"generated {count:,} events in {path}", file=sys.stderr)
    return path


def tree_memory_kib(root: int, kind: str = "Pss") -> int:
    """Memory of ``root`` and all its descendants now, in KiB: the sum of their PSS (from /proc).

    PSS (proportional set size) counts a page shared by n processes as 1/n in each, so the sum is
    the memory the tree really holds; summing RSS (``kind="Rss"``) would count every page a forked
    process still shares with its parent (the interpreter, the imported modules) once per process.
    """
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            parents[int(entry.name)] = int(fields[1])
    tree, changed = {root}, True
    while changed:
        grown = {pid for pid, parent in parents.items() if parent in tree} | tree
        changed, tree = grown != tree, grown
    total = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        line = next((x for x in rollup.splitlines() if x.startswith(f"{kind}:")), "- 0 kB")
        total += int(line.split()[1])
    return total


def run(
    args: list[str], env: dict[str, str], *, code: Path = ROOT, memory: bool = True
) -> tuple[dict[str, Any], float, float]:
    """Run ``recall replay``; return its JSON result, wall seconds, peak memory MiB.

    The peak is the largest sum, sampled every 0.1 s, of the memory (PSS) of the command and every
    process it started (a replay splits the phones across processes); without ``memory``, 0 and
    no sampling (each sample costs a few milliseconds of CPU). ``code``: the source tree whose
    ``worker`` runs (another commit's, for bench/ab.py), first on the path.
    """
    command = [sys.executable, "-m", "worker", "replay", *args, "--now", NOW, "--json"]
    started = time.perf_counter()
    with subprocess.Popen(
        command,
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code), "RECALL_RULES": str(RULES), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        peak = 0
        while memory and child.poll() is None:
            peak = max(peak, tree_memory_kib(child.pid))
            time.sleep(0.1)
        out, err = child.communicate()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"replay failed ({child.returncode}):\n{err.decode()}")
    return json.loads(out), wall, peak / 1024


def measure(count: int, *, dry: bool = True, applied: bool = True) -> dict[str, Any]:
    """Replay a generated history of about ``count`` events dry, then applied; print and return."""
    path = history(count)
    results: dict[str, Any] = {"events_file": str(path)}
    if dry:
        done, wall, rss = run([str(path), "--dry-run"], {})
        events = done["summary"]["events"]
        results.update(
            replay_events=events,
            replay_dry_per_s=round(events / wall),
            replay_dry_peak_mb=round(rss),
        )
        print(f"dry-run  {events:,} events in {wall:.1f}s: {events / wall:,.0f} events/s, "
              f"peak memory {rss:.0f} MiB (PSS)")  # fmt: skip

    if applied:
        server = PostgresServer()
        url = server.create_database()
        try:
            upgrade(url)
            env = {"RECALL_DATABASE_URL": url, "RECALL_BROKER_URL": "redis://127.0.0.1:1/0"}
            done, wall, rss = run([str(path)], env)
        finally:
            server.drop_database(url)
            server.stop()
        events = done["summary"]["events"]
        results.update(replay_events=events)
        results.update(replay_apply_per_s=round(events / wall), replay_apply_peak_mb=round(rss))
        print(f"applied  {events:,} events in {wall:.1f}s: {events / wall:,.0f} events/s, "
              f"peak memory {rss:.0f} MiB (PSS)")  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--skip-apply", action="store_true")
    parser.add_argument("--skip-dry", action="store_true", help="only the applied replay")
    args = parser.parse_args()
    results = measure(args.events, dry=not args.skip_dry, applied=not args.skip_apply)
    out = ROOT / "bench" / "results-replay.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
