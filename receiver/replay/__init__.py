"""Replay: deliveries read back from access logs, query-string files and exports (logformat.py
reads log lines; run.py stores them or sends them to a running receiver)."""
