"""``hourglass dashboard``: per-type SLOs from the bus and the lake, as metrics and a page."""
