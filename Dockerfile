# receiver: one uvicorn worker; the database an SQLite file on a volume, or a PostgreSQL server
# (RECEIVER_DB=postgresql://...: docker-compose.yml runs three of these on one).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECEIVER_HOST=0.0.0.0 \
    RECEIVER_PORT=8000 \
    RECEIVER_DB=/data/receiver.db

WORKDIR /app
COPY pyproject.toml README.md ./
COPY receiver ./receiver
COPY pbx_emulator ./pbx_emulator
# pyproject.toml's dependencies, PostgreSQL's driver among them: psycopg's binary wheel brings
# its own libpq, so the slim image needs no system package for it.
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /data receiver \
    && mkdir -p /data && chown receiver /data

USER receiver
VOLUME ["/data"]
EXPOSE 8000
# The port is read when the check runs: `docker run -e RECEIVER_PORT=...` moves the server.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RECEIVER_PORT', '8000'), timeout=2)"
CMD ["receiver", "serve"]
