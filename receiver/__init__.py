"""receiver: catch the PBX's call events, store them in SQLite, and turn them into answers."""

__version__ = "0.1.0"
