"""Hourglass: reliable event delivery, CloudEvents in, an exactly-once hourly Parquet lake out."""

__version__ = "0.1.0"
