"""The ``recall`` command: one group, one module per sub-command family."""

from __future__ import annotations

from worker.cli.common import main
from worker.cli.decide import decide
from worker.cli.demo import demo
from worker.cli.replay import replay
from worker.cli.rules import rules
from worker.cli.sample import sample
from worker.cli.services import db, dead_letters, phones, publish, status, worker

__all__ = ["main"]

main.add_command(decide)
main.add_command(rules)
main.add_command(sample)
for command in (worker, publish, replay, phones, dead_letters, status, db, demo):
    main.add_command(command)
