"""Prometheus metrics of the update server, summed over every gunicorn worker.

prometheus_client in multiprocess mode: each worker writes its values to memory-mapped
files in PROMETHEUS_MULTIPROC_DIR and whichever worker answers GET /metrics sums them.
It is the library's documented answer for gunicorn, with no lock shared between processes
(a worker killed mid-update cannot wedge the others), and counters of a worker that died
keep counting in the total. Its conditions are met in main.py: the master sets the
directory (empty) before it imports this module and forks, and its child_exit hook marks
dead workers so their in-flight downloads drop out of the live-summed gauge. Without the
variable (unit tests with Flask's test client) the same metrics live in this process.

Device counts are not stored here: a collector reads them from the registry at scrape time.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter("fotalab_http_requests_total", "HTTP requests answered, by route, method and status",
                   ["route", "method", "status"])
DURATION = Histogram("fotalab_http_request_duration_seconds",
                     "Time from request to the last byte handed to the socket, by route", ["route"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
BYTES_SENT = Counter("fotalab_artifact_bytes_sent_total",
                     "Artifact bytes sent to clients, by artifact kind", ["kind"])
DOWNLOADS = Counter("fotalab_artifact_downloads_total", "Artifact downloads started (200 or 206), by kind", ["kind"])
IN_FLIGHT = Gauge("fotalab_artifact_downloads_in_flight", "Artifact downloads being sent now",
                  multiprocess_mode="livesum")
MQTT_MESSAGES = Counter("fotalab_mqtt_messages_total",
                        "Device messages taken from MQTT, by topic kind and outcome "
                        "(stored, duplicate, stale, invalid)", ["kind", "outcome"])
INGEST_BATCH = Histogram("fotalab_mqtt_ingest_batch_messages",
                         "Device messages stored per registry transaction by the MQTT ingester",
                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
INGESTER = Gauge("fotalab_mqtt_ingester_connected",
                 "1 while this server's MQTT ingester is connected; the sum over workers is at most 1",
                 multiprocess_mode="livesum")


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.cache
def _child(metric: Counter | Histogram, *labels: str):
    """Labelled children, looked up once: this runs on every request (label sets are bounded)."""
    return metric.labels(*labels)


def download_started(kind: str) -> None:
    _child(DOWNLOADS, kind).inc()
    IN_FLIGHT.inc()


def download_finished(kind: str, sent: int) -> None:
    IN_FLIGHT.dec()
    _child(BYTES_SENT, kind).inc(sent)


def request_done(route: str, method: str, status: int, seconds: float) -> None:
    """Count a request; any method outside the standard ones is 'other', so clients cannot
    create label values at will."""
    _child(REQUESTS, route, method if method in METHODS else "other", str(status)).inc()
    _child(DURATION, route).observe(seconds)


class DeviceCollector:
    """Devices by reported state and online count, read from the registry when scraped."""

    def __init__(self, counts: Callable[[], tuple[dict[str, int], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state, online = self._counts()
        states = GaugeMetricFamily("fotalab_devices", "Devices by their last reported state", labels=["state"])
        for state, count in sorted(by_state.items()):
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily("fotalab_devices_online", "Devices whose MQTT status is online", value=online)


def render(device_counts: Callable[[], tuple[dict[str, int], int]]) -> bytes:
    """The exposition text: every worker's metrics plus the device gauges."""
    if values.ValueClass is not values.MutexValue:    # multiprocess mode: main.py set the directory
        registry = CollectorRegistry()
        MultiProcessCollector(registry)                  # reads the directory prometheus_client was given
        registry.register(DeviceCollector(device_counts))
        return generate_latest(registry)
    registry = CollectorRegistry()
    registry.register(DeviceCollector(device_counts))
    return generate_latest(REGISTRY) + generate_latest(registry)
