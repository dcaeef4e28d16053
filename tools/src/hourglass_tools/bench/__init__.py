"""``hourglass bench``: throughput, latency and lake timeliness of the whole
pipeline on this machine, each against the ceiling it is judged by (the bare
HTTP server, raw JetStream publishing), measured in the same run."""

from hourglass_tools.bench.command import add_parser, cmd_bench

__all__ = ["add_parser", "cmd_bench"]
