"""The daemon's request counters, latency histograms and per-log request history.

The shell feeds ``Metrics`` what happened (a request answered, a log write done, a flush, a
device failure) together with the times it measured; ``Metrics`` keeps counters, fixed-bucket
histograms, a bounded history per log and a bounded window of latencies per log and request
type. It renders two things: ``history``/``stats`` values for the log snapshots the FUSE view
shows, and the whole state in the Prometheus text exposition format (version 0.0.4) for
``/run/clogfs/metrics``.

A log is labelled ``<uuid>@<luid>`` (``clogfs.fusefs.inodes.instance_name`` with
``shared=True``): unlike the view's directory name, which gains and loses its ``@<luid>``
during a table reload, this label stays the same for an instance's whole life. A request
that named no known log is counted daemon-wide only. ``forget_log`` drops a log's series.

Exposed families (all prefixed ``clogfs_``):

- ``requests_total{type,result}``: every request answered; ``result`` is ``ok`` or the errno
  name of a failure (``EINVAL``).
- ``request_duration_seconds{type}``: histogram of the time from arrival to reply.
- ``log_requests_total{log,type}``: requests answered per live log.
- ``flushes_total{log}``: flushes that reached the log device.
- ``log_writes_total{log,result}``, ``log_written_bytes_total{log}``: log device writes,
  ``result`` ``ok`` or ``error``; ``log_write_duration_seconds``: histogram of their latency.
- ``log_device_failures_total{log,state}``: device failures, ``state`` ``D`` (a write
  failed) or ``F`` (a flush failed).
- ``logs{state}``: live log instances per lifecycle state (from the snapshots).
- ``log_regions{log}``, ``log_regions_in_sync{log}``: region and sync counts (from the
  snapshots).

Core module: no trio, no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import bisect
import errno
import math
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from clogfs.fusefs.inodes import instance_name
from clogfs.snapshot import LogSnapshot, RequestRecord, RequestStats

#: upper bounds of the request latency histogram, seconds
REQUEST_BUCKETS_S = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
#: upper bounds of the log write latency histogram, seconds
WRITE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: latencies kept per log and request type for the p50/p99 of ``stats``
LATENCY_WINDOW = 1024
#: the lifecycle states ``clogfs_logs`` always reports, zero or not
LOG_STATES = ("constructed", "resumed", "suspended", "failed")
DEVICE_FAILURE_STATES = ("D", "F")


def result_label(result: int) -> str:
    """Return the ``result`` label of a reply: ``ok``, or the errno name of ``-result``."""
    if result == 0:
        return "ok"
    return errno.errorcode.get(abs(result), f"E{abs(result)}")


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Return the nearest-rank ``q`` quantile of a non-empty sorted sequence."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class Histogram:
    """A cumulative fixed-bucket histogram, as Prometheus exposes one.

    Args:
        bounds: the bucket upper bounds, increasing; ``+Inf`` is implied.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Return ``(le, cumulative count)`` per bucket, ``+Inf`` last."""
        running = 0
        out = []
        for bound, count in zip((*map(_number, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class _LogCounters:
    """What ``Metrics`` keeps for one live log."""

    history: deque[RequestRecord]
    requests: Counter[str] = field(default_factory=Counter)
    latencies_us: dict[str, deque[float]] = field(default_factory=dict)
    flushes: int = 0
    writes: Counter[str] = field(default_factory=Counter)
    written_bytes: int = 0
    device_failures: Counter[str] = field(default_factory=Counter)


class Metrics:
    """Counters, histograms and histories of one daemon.

    Args:
        history_len: requests kept per log for the view's ``history`` file.
    """

    def __init__(self, *, history_len: int = 64) -> None:
        if history_len < 1:
            raise ValueError(f"history_len must be positive, not {history_len}")
        self._history_len = history_len
        self._logs: dict[str, _LogCounters] = {}
        self._requests: Counter[tuple[str, str]] = Counter()
        self._request_latency: dict[str, Histogram] = {}
        self._write_latency = Histogram(WRITE_BUCKETS_S)

    def _log(self, log: str) -> _LogCounters:
        counters = self._logs.get(log)
        if counters is None:
            counters = _LogCounters(history=deque(maxlen=self._history_len))
            self._logs[log] = counters
        return counters

    def observe_request(
        self,
        log: str | None,
        request_type: str,
        *,
        seq: int,
        regions: tuple[int, ...],
        result: int,
        arrived: float,
        latency_s: float,
    ) -> None:
        """Count one answered request.

        Args:
            log: the instance's directory name, None when no log was found.
            request_type: the ``RequestType`` name, e.g. ``MARK_REGION``.
            seq: the request's sequence number.
            regions: the regions it named (empty for most types).
            result: 0 or a negative errno.
            arrived: when it arrived, seconds since the epoch.
            latency_s: from arrival to reply.
        """
        self._requests[(request_type, result_label(result))] += 1
        histogram = self._request_latency.get(request_type)
        if histogram is None:
            histogram = self._request_latency[request_type] = Histogram(REQUEST_BUCKETS_S)
        histogram.observe(latency_s)
        if log is None:
            return
        counters = self._log(log)
        latency_us = latency_s * 1e6
        counters.history.append(
            RequestRecord(arrived, seq, request_type, tuple(regions), result, latency_us)
        )
        counters.requests[request_type] += 1
        window = counters.latencies_us.get(request_type)
        if window is None:
            window = counters.latencies_us[request_type] = deque(maxlen=LATENCY_WINDOW)
        window.append(latency_us)

    def observe_write(self, log: str, *, nbytes: int, latency_s: float, ok: bool) -> None:
        """Count one write to ``log``'s device of ``nbytes`` (counted only if ``ok``)."""
        counters = self._log(log)
        counters.writes["ok" if ok else "error"] += 1
        if ok:
            counters.written_bytes += nbytes
        self._write_latency.observe(latency_s)

    def observe_flush(self, log: str) -> None:
        """Count one flush of ``log`` that reached its device."""
        self._log(log).flushes += 1

    def observe_device_failure(self, log: str, state: str) -> None:
        """Count a failure of ``log``'s device; ``state`` is ``D`` or ``F``.

        Raises:
            ValueError: another state.
        """
        if state not in DEVICE_FAILURE_STATES:
            raise ValueError(f"device failure state must be D or F, not {state!r}")
        self._log(log).device_failures[state] += 1

    def forget_log(self, log: str) -> None:
        """Drop everything kept for ``log`` (at DTR); unknown names are ignored."""
        self._logs.pop(log, None)

    def history(self, log: str) -> tuple[RequestRecord, ...]:
        """Return ``log``'s last requests, oldest first (empty for an unknown log)."""
        counters = self._logs.get(log)
        return tuple(counters.history) if counters is not None else ()

    def stats(self, log: str) -> RequestStats:
        """Return ``log``'s request counts and latency p50/p99 per type, by type name.

        The quantiles cover the last ``LATENCY_WINDOW`` requests of each type.
        """
        counters = self._logs.get(log)
        if counters is None:
            return RequestStats()
        names = sorted(counters.requests)
        p50: list[tuple[str, float]] = []
        p99: list[tuple[str, float]] = []
        for name in names:
            window = sorted(counters.latencies_us[name])
            p50.append((name, quantile(window, 0.5)))
            p99.append((name, quantile(window, 0.99)))
        counts = tuple((name, counters.requests[name]) for name in names)
        return RequestStats(counts, tuple(p50), tuple(p99))

    def render_prometheus(self, snapshots: Sequence[LogSnapshot]) -> str:
        """Return every family in the Prometheus text exposition format.

        Args:
            snapshots: the live instances (for the per-state and region gauges).
        """
        out = _Exposition()
        out.family("requests_total", "counter", "Requests answered, by type and result.")
        for (kind, result), count in sorted(self._requests.items()):
            out.sample("requests_total", {"type": kind, "result": result}, count)
        out.family(
            "request_duration_seconds", "histogram", "Time from a request's arrival to its reply."
        )
        for kind, histogram in sorted(self._request_latency.items()):
            out.histogram("request_duration_seconds", {"type": kind}, histogram)
        out.family("log_requests_total", "counter", "Requests answered per live log, by type.")
        for log, counters in sorted(self._logs.items()):
            for kind, count in sorted(counters.requests.items()):
                out.sample("log_requests_total", {"log": log, "type": kind}, count)
        out.family("flushes_total", "counter", "Flushes that reached the log device.")
        for log, counters in sorted(self._logs.items()):
            out.sample("flushes_total", {"log": log}, counters.flushes)
        out.family("log_writes_total", "counter", "Writes to the log device, by result.")
        for log, counters in sorted(self._logs.items()):
            for result, count in sorted(counters.writes.items()):
                out.sample("log_writes_total", {"log": log, "result": result}, count)
        out.family("log_written_bytes_total", "counter", "Bytes written to the log device.")
        for log, counters in sorted(self._logs.items()):
            out.sample("log_written_bytes_total", {"log": log}, counters.written_bytes)
        out.family("log_write_duration_seconds", "histogram", "Latency of log device writes.")
        out.histogram("log_write_duration_seconds", {}, self._write_latency)
        out.family(
            "log_device_failures_total", "counter", "Log device failures (D write, F flush)."
        )
        for log, counters in sorted(self._logs.items()):
            for state, count in sorted(counters.device_failures.items()):
                out.sample("log_device_failures_total", {"log": log, "state": state}, count)
        self._render_snapshots(out, snapshots)
        return out.text()

    @staticmethod
    def _render_snapshots(out: _Exposition, snapshots: Iterable[LogSnapshot]) -> None:
        named = {instance_name(s.uuid, s.luid, shared=True): s for s in snapshots}
        states = Counter(snap.state for snap in named.values())
        out.family("logs", "gauge", "Live log instances by lifecycle state.")
        for state in (*LOG_STATES, *sorted(set(states) - set(LOG_STATES))):
            out.sample("logs", {"state": state}, states[state])
        out.family("log_regions", "gauge", "Regions of each live log.")
        for name, snap in named.items():
            out.sample("log_regions", {"log": name}, snap.region_count)
        out.family("log_regions_in_sync", "gauge", "Regions in sync of each live log.")
        for name, snap in named.items():
            out.sample("log_regions_in_sync", {"log": name}, snap.sync_count)


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Exposition:
    """Builds the text format: ``# HELP``/``# TYPE`` per family, then its samples."""

    PREFIX = "clogfs_"

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {self.PREFIX}{name} {help_text}")
        self._lines.append(f"# TYPE {self.PREFIX}{name} {kind}")

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        rendered = ",".join(f'{key}="{_label_value(val)}"' for key, val in labels.items())
        braces = f"{{{rendered}}}" if rendered else ""
        self._lines.append(f"{self.PREFIX}{name}{braces} {_number(value)}")

    def histogram(self, name: str, labels: dict[str, str], histogram: Histogram) -> None:
        for bound, count in histogram.cumulative():
            self.sample(f"{name}_bucket", {**labels, "le": bound}, count)
        self.sample(f"{name}_sum", labels, histogram.total)
        self.sample(f"{name}_count", labels, histogram.count)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
