"""Chaos harness: the pipeline as separate processes, killed and paused on a
seeded schedule, then checked end to end (``hourglass chaos``, ``tests/chaos``).

Modules: ``producers`` (child programs that log what was promised),
``components`` (start / kill -9 / SIGSTOP / restart one process),
``schedule`` (the seeded faults and the timeline), ``harness`` (the run),
``verify`` (lake checks), ``report`` (the table).  Importing this package is
cheap: the CLI builds its parser from it without loading the server side.
"""

from hourglass_tools.chaos.command import add_parser, cmd_chaos

__all__ = ["add_parser", "cmd_chaos"]
