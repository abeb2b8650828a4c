"""Prometheus metrics: one registry per process, queue gauges read from the store at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reelgen.domain.errors import Unavailable
from reelgen.store.jobs import JobStore

GPU_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 2400, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gpu_seconds = Histogram(
            "reelgen_job_gpu_seconds",
            "Seconds the model held the accelerator for one attempt at one job.",
            ["model"],
            buckets=GPU_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "reelgen_jobs_finished_total",
            "Jobs that reached a terminal status in this process.",
            ["model", "status"],
            registry=self.registry,
        )
        self.lease_expiries = Counter(
            "reelgen_lease_expiries_total",
            "Leases the controller found expired (worker lost).",
            registry=self.registry,
        )
        self.retries = Counter(
            "reelgen_job_retries_total",
            "Jobs requeued after their worker was lost.",
            registry=self.registry,
        )
        self.worker_busy = Gauge(
            "reelgen_worker_busy_ratio",
            "Share of its life this worker spent on jobs.",
            ["worker", "model"],
            registry=self.registry,
        )
        self.prefetched = Counter(
            "reelgen_worker_prefetched_total",
            "Jobs a worker claimed and prepared while the previous job's last step ran.",
            registry=self.registry,
        )
        self.model_switches = Counter(
            "reelgen_model_switches_total",
            "Times a worker parked one model it serves and brought another onto its device.",
            ["from_model", "to_model"],
            registry=self.registry,
        )
        self.model_switch_seconds = Histogram(
            "reelgen_model_switch_seconds",
            "How long bringing a parked model onto the device took (the other one parked).",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, float("inf")),
            registry=self.registry,
        )
        self.gc_expired = Counter(
            "reelgen_gc_expired_videos_total",
            "Expired videos whose objects the garbage collector deleted and rows it cleared.",
            registry=self.registry,
        )
        self.gc_prompts_forgotten = Counter(
            "reelgen_gc_prompts_forgotten_total",
            "Finished jobs whose prompt text was cleared past its retention (a hash is kept).",
            registry=self.registry,
        )
        self.gc_failures = Counter(
            "reelgen_gc_failures_total",
            "Garbage-collector batches that failed (storage or database); retried next round.",
            registry=self.registry,
        )
        self.gc_backlog = Gauge(
            "reelgen_gc_backlog_videos",
            "Expired videos still holding content after the last garbage-collector round "
            "(at least; counted up to one batch).",
            registry=self.registry,
        )
        self.assignments = Counter(
            "reelgen_dispatch_assignments_total",
            "Jobs the dispatcher gave to a worker.",
            registry=self.registry,
        )
        self.preemptions = Counter(
            "reelgen_preemptions_total",
            "Running jobs the dispatcher asked to checkpoint and yield.",
            registry=self.registry,
        )
        self.is_leader = Gauge(
            "reelgen_controller_leader",
            "1 while this controller holds the leader lock.",
            registry=self.registry,
        )

    def watch_queue(self, jobs: JobStore, clock: Callable[[], float]) -> None:
        """Adds gauges computed from the database at each scrape (api and controller)."""
        self.registry.register(_QueueCollector(jobs, clock))


class _QueueCollector(Collector):
    def __init__(self, jobs: JobStore, clock: Callable[[], float]):
        self.jobs, self.clock = jobs, clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        reachable = GaugeMetricFamily(
            "reelgen_database_reachable", "1 when the last scrape could read the database."
        )
        try:
            snap = self.jobs.queue_snapshot(now)
        except Unavailable:
            reachable.add_metric([], 0)
            yield reachable
            return
        reachable.add_metric([], 1)
        yield reachable
        depth = GaugeMetricFamily("reelgen_queue_depth", "Queued jobs.", labels=["model", "tier"])
        oldest = GaugeMetricFamily(
            "reelgen_queue_oldest_wait_seconds",
            "How long the oldest queued job has waited.",
            labels=["model", "tier"],
        )
        for model, tier, count, first in snap.queued:
            depth.add_metric([model, tier], count)
            oldest.add_metric([model, tier], max(0.0, now - first))
        by_status = GaugeMetricFamily(
            "reelgen_jobs", "Jobs not yet finished, by status.", labels=["model", "status"]
        )
        for model, status, count in snap.active:
            by_status.add_metric([model, status], count)
        workers = GaugeMetricFamily(
            "reelgen_workers", "Live workers, and how many are busy.", labels=["model", "state"]
        )
        for model, live, busy in snap.workers:
            workers.add_metric([model, "live"], live)
            workers.add_metric([model, "busy"], busy)
        desired = GaugeMetricFamily(
            "reelgen_desired_workers",
            "Workers the leading controller wants in each model pool (the autoscaling signal).",
            labels=["model"],
        )
        age = GaugeMetricFamily(
            "reelgen_desired_workers_age_seconds",
            "How long ago the leading controller computed reelgen_desired_workers.",
            labels=["model"],
        )
        late = GaugeMetricFamily(
            "reelgen_jobs_late",
            "Queued jobs waiting past their deadline (batch), as the dispatcher last counted.",
            labels=["model"],
        )
        for target, updated_at in snap.pools:
            desired.add_metric([target.model], target.desired)
            age.add_metric([target.model], max(0.0, now - updated_at))
            late.add_metric([target.model], target.late)
        yield from (depth, oldest, by_status, workers, desired, age, late)
