"""GET /metrics: the receiver's figures in Prometheus' text format (prometheus-client).

What happens to deliveries is counted as it happens, in the server process, where each
delivery's outcome and each group commit come back; what the database holds is read from it
when /metrics is scraped. No label takes unbounded values: outcomes and refusal reasons are
closed sets, and the per-myid figures are of the myids that sent events (at most
upkeep.MYIDS_SHOWN of them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from receiver.event import now_us
from receiver.store import Storage
from receiver.store.outbox import Outcome

if TYPE_CHECKING:
    from receiver.silence import Watch

OUTCOMES = ("stored", "duplicate", "refused", "not_stored")
# A refusal's reason, by its status (web/webhook.py): a closed set, unlike the reasons' texts.
REFUSALS = {
    400: "malformed",
    403: "token",
    405: "method",
    408: "body_timeout",
    413: "too_large",
    415: "media_type",
}
# No *_created series beside each counter: the process's start time is there once.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GROUP_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


class Metrics:
    """The counters of one server, and the figures read at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "receiver_deliveries",
            "Deliveries to /webhook, by what became of them.",
            ["outcome"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "receiver_refused_deliveries",
            "Refused deliveries, by reason: malformed (400), token (403), method (405), "
            "body_timeout (408), too_large (413), media_type (415).",
            ["reason"],
            registry=self.registry,
        )
        self.ingest = Histogram(
            "receiver_ingest_seconds",
            "Time from a delivery's arrival to its answer, for the events stored (and repeats).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.groups = Histogram(
            "receiver_group_commit_size",
            "Deliveries (and refusals kept) committed together in one transaction.",
            buckets=GROUP_BUCKETS,
            registry=self.registry,
        )
        # Each label's child made once (labels() costs more than the count): all present from
        # the start, at 0, so that rates can be taken.
        self.forwarded = Counter(
            "receiver_forward_attempts",
            "Attempts to forward a message, by destination and what became of the message: "
            "delivered, retry (to be tried again) or dead.",
            ["destination", "outcome"],
            registry=self.registry,
        )
        self.forward_lag = Histogram(
            "receiver_forward_lag_seconds",
            "Time from a message's writing into the outbox to its delivery.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.by_outcome = {outcome: self.deliveries.labels(outcome) for outcome in OUTCOMES}
        self.by_reason = {reason: self.refusals.labels(reason) for reason in REFUSALS.values()}
        self.now = Snapshot()
        self.registry.register(self.now)
        ProcessCollector(registry=self.registry)

    def answered(self, outcome: str, began: float) -> None:
        """One delivery answered: stored, duplicate or not_stored; `began`: its
        time.perf_counter() at arrival."""
        self.by_outcome[outcome].inc()
        if outcome != "not_stored":
            self.ingest.observe(time.perf_counter() - began)

    def refused(self, status: int) -> None:
        self.by_outcome["refused"].inc()
        reason = REFUSALS.get(status, str(status))
        (self.by_reason.get(reason) or self.refusals.labels(reason)).inc()

    def committed(self, size: int) -> None:
        self.groups.observe(size)

    def attempted(self, destination: str, outcome: Outcome, lag: float | None) -> None:
        """One forwarding attempt ended (forward/delivery.py)."""
        kind = "retry" if outcome.status == "pending" else outcome.status
        self.forwarded.labels(destination, kind).inc()
        if lag is not None:
            self.forward_lag.observe(lag)


class Snapshot(Collector):
    """The figures read from the store at a scrape, as gauges."""

    def __init__(self) -> None:
        self.gauges: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.gauges)

    async def read(self, store: Storage, watch: Watch | None) -> None:
        """Read the store's figures now."""
        writer = store.writer_state()
        sizes = await store.sizes()
        calls = await store.calls_state()
        newest = await store.newest_events()
        outbox = await store.forward_counts()
        now = now_us()
        gauges: list[Metric] = [
            gauge("receiver_writer_up", "1 while the writer (process) runs.", int(writer.alive)),
            gauge(
                "receiver_writer_queue_depth",
                "Deliveries waiting for their group commit.",
                writer.queued,
            ),
            gauge(
                "receiver_calls_backlog_events",
                "Events stored whose calls are not built yet.",
                max(calls.events - calls.built_to_event, 0),
            ),
            gauge("receiver_events", "Events stored.", sizes.events),
            gauge(
                "receiver_database_bytes",
                "Size of the database (with its write-ahead log).",
                sizes.database_bytes,
            ),
            gauge(
                "receiver_database_free_bytes",
                "Space inside the database that new rows will reuse.",
                sizes.free_bytes,
            ),
        ]
        if sizes.disk_free_bytes is not None:
            gauges.append(
                gauge(
                    "receiver_disk_free_bytes",
                    "Free space on the database's file system.",
                    sizes.disk_free_bytes,
                )
            )
        age = GaugeMetricFamily(
            "receiver_newest_event_age_seconds",
            "Seconds since each myid's newest event (its EventTime, or its receipt).",
            labels=["myid"],
        )
        for myid, order_us in sorted(newest.items()):
            age.add_metric([myid], max(now - order_us, 0) / 1e6)
        gauges.append(age)
        if outbox:
            for name, key, help_text in (
                ("receiver_forward_pending", "pending", "Messages waiting to be forwarded."),
                ("receiver_forward_dead", "dead", "Messages no more tries will be made of."),
            ):
                family = GaugeMetricFamily(name, help_text, labels=["destination"])
                for row in outbox:
                    family.add_metric([row["destination"]], row[key])
                gauges.append(family)
            disabled = GaugeMetricFamily(
                "receiver_forward_disabled",
                "1 for a destination disabled (it answered 410); else 0.",
                labels=["destination"],
            )
            for row in outbox:
                disabled.add_metric([row["destination"]], int(row["disabled_at"] is not None))
            gauges.append(disabled)
        if watch is not None:
            silent = GaugeMetricFamily(
                "receiver_silent",
                "1 for a myid that sent events and then none for --silence-after; else 0.",
                labels=["myid"],
            )
            for myid in sorted(newest):
                silent.add_metric([myid], int(myid in watch.quiet))
            gauges += [
                silent,
                gauge("receiver_silent_myids", "How many myids are silent.", len(watch.quiet)),
            ]
        self.gauges = gauges


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


async def metrics(request: Request) -> Response:
    """GET /metrics: every figure, in Prometheus' text format."""
    state = request.app.state
    found: Metrics = state.metrics
    await found.now.read(state.store, state.watch)
    return Response(generate_latest(found.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
