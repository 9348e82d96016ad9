"""``python -m worker`` is the ``recall`` command."""

from worker.cli import main

main(prog_name="recall")
