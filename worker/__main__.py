"""``python -m worker`` is the ``recall`` command."""

from worker.cli import run

run()
