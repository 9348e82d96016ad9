"""Bad rules: generated broken rules files are refused with one clear line, and a running worker
keeps its last good rules when its file breaks, and takes a good file again.

The broken files are the shipped ``config/default_rules.toml`` with one mutation each, drawn by
hypothesis from a fixed derandomised seed: broken TOML, a wrong type, an unknown key or section,
a bad SIP code, a built-in row's ``active`` changed, a bad duration, bad calling hours, an unknown
time zone, a bad attempt cap. Each must be refused by ``recall rules check`` with exit code 1 and
one stderr line naming the file, the entry and the field.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.workers import ROOT, WorkerProcess, decision_of
from worker.cli import main
from worker.client import RecallClient
from worker.domain.rules import DEFAULT_RULES_PATH
from worker.store.database import make_engine, upgrade

CASES = 150
BASE: dict[str, Any] = tomllib.loads(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))
SECTIONS = ("sip_codes", "outcomes", "plans")
LABELS = {"sip_codes": "code", "outcomes": "code", "plans": "id"}
VALUES_BY_TYPE: dict[type, Any] = {
    str: "text", int: 7, bool: True, float: 1.5, list: [1], dict: {"a": 1},
}  # fmt: skip


@dataclass(frozen=True)
class Mutation:
    """One change that breaks a rules file, and where the error line must point."""

    kind: str
    section: str  # "" for a top-level change, or "toml" for broken syntax
    index: int
    field: str  # the first part of the error after the entry (a key, or "not valid TOML")
    change: Any  # (key path, value) for entries; the text to insert for broken TOML

    def text(self, base: dict[str, Any]) -> str:
        if self.section == "toml":
            line, insert = self.change
            lines = tomli_w.dumps(base).splitlines()
            lines.insert(line % (len(lines) + 1), insert)
            return "\n".join(lines) + "\n"
        data = copy.deepcopy(base)
        target = data[self.section][self.index] if self.section in SECTIONS else data
        *parents, key = self.change[0]
        for name in parents:
            target = target.setdefault(name, {})
        target[key] = self.change[1]
        return tomli_w.dumps(data)

    def entry(self) -> str:
        """How the error line names the entry: ``plans[1] (id us_tcpa)``, or the section."""
        if self.section not in SECTIONS:
            return self.section
        label = LABELS[self.section]
        value = BASE[self.section][self.index][label]
        if self.field == label:  # the identity itself is what is broken
            return f"{self.section}[{self.index}]"
        return f"{self.section}[{self.index}] ({label} {value})"


def _entries(section: str) -> st.SearchStrategy[int]:
    return st.integers(0, len(BASE[section]) - 1)


def _wrong_type(section: str, index: int) -> st.SearchStrategy[Mutation]:
    entry = BASE[section][index]
    return st.sampled_from(sorted(entry)).flatmap(
        lambda key: st.sampled_from(
            [v for t, v in VALUES_BY_TYPE.items() if not isinstance(entry[key], t)]
        ).map(lambda value: Mutation("wrong type", section, index, key, ((key,), value)))
    )


NAME = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
BAD_DURATIONS = [{"weeks": 1}, {"minutes": -1}, {}, {"hours": 1.5}, {"days": "1"}, "15m", 15]
BAD_HOURS = ["8-21", "21:00-08:00", "25:00-26:00", "08:60-09:00", "", "08:00", "always",
             "08:00-12:00;13:00-17:00", "8:00-9:00"]  # fmt: skip
BAD_ZONES = ["Mars/Base", "../../etc/passwd", "", "UTC+5", "Europe/london"]
BROKEN_TOML = ["[[plans]", "code = ", "= 1", "x = 'unterminated", "[defaults]", "a.b = 1\na = 2",
               "code = 486 486", "[sip_codes", "\x00"]  # fmt: skip


def mutation() -> st.SearchStrategy[Mutation]:
    section = st.sampled_from(SECTIONS)
    with_duration = [
        ("sip_codes", i) for i, row in enumerate(BASE["sip_codes"]) if "recall_after" in row
    ] + [("outcomes", i) for i, row in enumerate(BASE["outcomes"]) if "recall_after" in row]
    plans = _entries("plans")
    return st.one_of(
        section.flatmap(lambda s: _entries(s).flatmap(lambda i: _wrong_type(s, i))),
        st.tuples(section, NAME).flatmap(
            lambda sn: _entries(sn[0]).map(
                lambda i: Mutation("unknown key", sn[0], i, f"{sn[1]}x", ((f"{sn[1]}x",), 1))
            )
        ),
        NAME.filter(lambda n: n not in BASE).map(
            lambda n: Mutation("unknown section", n, 0, "unknown section", ((n,), {"a": 1}))
        ),
        st.tuples(
            _entries("sip_codes"), st.sampled_from([99, 399, 700, 1000, "7xx", "4XX", "", -486])
        ).map(lambda iv: Mutation("bad SIP code", "sip_codes", iv[0], "code", (("code",), iv[1]))),
        _entries("sip_codes").map(
            lambda i: Mutation(
                "built-in active changed", "sip_codes", i, "active", (("active",), False)
            )
        ),
        st.tuples(st.sampled_from(with_duration), st.sampled_from(BAD_DURATIONS)).map(
            lambda sv: Mutation(
                "bad duration", sv[0][0], sv[0][1], "recall_after", (("recall_after",), sv[1])
            )
        ),
        st.tuples(plans, st.sampled_from(["mon", "sat", "sun"]), st.sampled_from(BAD_HOURS)).map(
            lambda p: Mutation(
                "bad calling hours",
                "plans",
                p[0],
                f"calling_hours.{p[1]}",
                (("calling_hours", p[1]), p[2]),
            )
        ),
        st.tuples(plans, NAME).map(
            lambda p: Mutation(
                "bad calling hours",
                "plans",
                p[0],
                f"calling_hours.{p[1]}x",
                (("calling_hours", f"{p[1]}x"), "08:00-09:00"),
            )
        ),
        st.tuples(plans, st.sampled_from(BAD_ZONES)).map(
            lambda p: Mutation("bad time zone", "plans", p[0], "timezone", (("timezone",), p[1]))
        ),
        st.sampled_from(BAD_ZONES).map(
            lambda z: Mutation(
                "bad time zone", "defaults", 0, "timezone", (("defaults", "timezone"), z)
            )
        ),
        st.tuples(plans, st.sampled_from([0, -1, "3", 2.5])).map(
            lambda p: Mutation(
                "bad attempt cap",
                "plans",
                p[0],
                "max_attempts[0]",
                (("max_attempts",), [{"count": p[1], "within": {"hours": 1}}]),
            )
        ),
        st.tuples(st.integers(0, 2000), st.sampled_from(BROKEN_TOML)).map(
            lambda li: Mutation("broken TOML", "toml", 0, "not valid TOML", li)
        ),
    )


def generate() -> list[Mutation]:
    """The mutations, drawn by hypothesis from a fixed seed: the same on every run."""
    drawn: list[Mutation] = []

    @settings(
        max_examples=CASES, derandomize=True, database=None, phases=[Phase.generate],
        deadline=None, suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(mutation())
    def draw(item: Mutation) -> None:
        drawn.append(item)

    while len(drawn) < CASES:
        draw()
    return drawn[:CASES]


def expected_start(path: Path, item: Mutation) -> str:
    if item.section == "toml":
        return f"error: {path}: not valid TOML: "
    if item.section == "defaults":
        return f"error: {path}: defaults: {item.field}: "
    if item.section not in SECTIONS:
        return f"error: {path}: {item.section}: unknown section "
    return f"error: {path}: {item.entry()}: {item.field}"


def test_generated_broken_rules_files_are_refused_with_one_clear_line(tmp_path: Path) -> None:
    mutations = generate()
    runner = CliRunner()
    wrong = []
    for number, item in enumerate(mutations):
        path = tmp_path / f"broken-{number}.toml"
        path.write_text(item.text(BASE), encoding="utf-8")
        result = runner.invoke(main, ["rules", "check", "--rules", str(path)])
        lines = result.stderr.splitlines()
        if not (
            result.exit_code == 1
            and result.stdout == ""
            and len(lines) == 1
            and lines[0].startswith(expected_start(path, item))
        ):
            wrong.append((item, result.exit_code, result.stderr))
    assert wrong == [], wrong[:5]

    # The same through the real command, for one case of each kind.
    first = {item.kind: number for number, item in reversed(list(enumerate(mutations)))}
    for number in sorted(first.values()):
        path = tmp_path / f"broken-{number}.toml"
        done = subprocess.run(
            [sys.executable, "-m", "worker", "rules", "check", "--rules", str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith(expected_start(path, mutations[number]))
    kinds = Counter(item.kind for item in mutations)
    print(
        f"\nbad rules: {len(mutations)} generated broken files refused with one line each "
        f"({len(first)} also through the real command): {dict(sorted(kinds.items()))}"
    )


# --- a running worker ------------------------------------------------------------------------

PLAN = {"id": "it", "can_recall": True, "timezone": "UTC"}


def rules_with_busy_after(minutes: int) -> dict[str, Any]:
    """The shipped rules, with an always-open plan ``it`` and SIP 486 recalling after
    ``minutes``."""
    data = copy.deepcopy(BASE)
    data["plans"].append(dict(PLAN))
    (busy,) = [row for row in data["sip_codes"] if row["code"] == 486]
    busy["recall_after"] = {"minutes": minutes}
    return data


def test_a_running_worker_keeps_its_last_good_rules_and_takes_a_good_file_again(
    broker_url: str, tmp_path: Path, worker_process: Callable[..., WorkerProcess]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(tomli_w.dumps(rules_with_busy_after(10)), encoding="utf-8")
    database = f"sqlite:///{tmp_path / 'recall.db'}"
    upgrade(database)
    env = {
        "RECALL_BROKER_URL": broker_url, "RECALL_DATABASE_URL": database,
        "RECALL_RULES": str(rules), "RECALL_HOME": str(tmp_path / "home"),
    }  # fmt: skip
    worker = worker_process(env, "--concurrency", "1", name="rules")
    client = RecallClient(broker_url)
    engine = make_engine(database)
    seen = 0

    def delay(event_id: str) -> timedelta:
        """Publish a busy call now; how long after it its recall is due."""
        occurred = datetime.now(UTC).replace(microsecond=0)
        call = {"event_id": event_id, "plan_id": "it", "lead_id": "L", "phone_id": event_id}
        decision = decision_of(
            client, engine, {**call, "sip_code": 486, "occurred_at": occurred.isoformat()},
            worker, poll_s=0.2,
        )  # fmt: skip
        return datetime.fromisoformat(decision["due_at"]) - occurred

    try:
        assert delay("before") == timedelta(minutes=10)
        broken = [item for item in generate() if item.section in ("toml", "plans")][:3]
        for number, item in enumerate(broken):
            rules.write_text(item.text(rules_with_busy_after(30)), encoding="utf-8")
            time.sleep(
                2.5
            )  # past the worker's reload check interval (worker/runtime/rules_cache.py)
            assert delay(f"broken-{number}") == timedelta(minutes=10)  # the last good rules
            refused = re.findall(r"rules not reloaded, keeping the last good rules: (.*)",
                                 worker.text())  # fmt: skip
            assert len(refused) == seen + 1, worker.text()[-2000:]
            seen += 1
            assert refused[-1].startswith(expected_start(rules, item).removeprefix("error: "))
        rules.write_text(tomli_w.dumps(rules_with_busy_after(20)), encoding="utf-8")
        time.sleep(2.5)
        assert delay("fixed") == timedelta(minutes=20)
        assert "rules reloaded from" in worker.text()
        assert worker.process is not None
        assert worker.process.poll() is None
    finally:
        client.app.close()
        engine.dispose()
    print(
        f"\nbad rules, running worker: {len(broken)} broken files refused (one log line each), "
        "decisions after each used the last good rules (486 after 10 min); the fixed file "
        "(20 min) was taken"
    )
