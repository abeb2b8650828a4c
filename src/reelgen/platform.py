"""Wires settings into the long-lived pieces every process shares; built once per process."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Generic, TypeVar

from reelgen.domain.jobs import User
from reelgen.models.base import VideoModel
from reelgen.models.registry import build_model
from reelgen.observability.metrics import Metrics
from reelgen.scheduler.policy import Policy
from reelgen.settings import Settings
from reelgen.storage.base import ObjectStore, open_store
from reelgen.store.accounts import AccountStore
from reelgen.store.database import Database, make_engine
from reelgen.store.jobs import JobStore
from reelgen.store.notify import Bus, open_bus

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A small bounded map whose entries expire; thread-safe enough for dict semantics."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K, now: float) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] < now:
            return None
        return item[1]

    def put(self, key: K, value: V, now: float) -> None:
        if len(self._items) >= self.max_entries:
            self._items.clear()
        self._items[key] = (now + self.ttl_s, value)


@dataclass
class Platform:
    settings: Settings
    db: Database
    objects: ObjectStore
    clock: Callable[[], float] = time.time
    policy: Policy = field(default_factory=Policy)
    _models: dict[str, VideoModel] = field(default_factory=dict)
    _cancels: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    key_cache: TTLCache[str, User] = field(default_factory=lambda: TTLCache(ttl_s=30.0))
    """API key hash -> user; a revoked key may keep working for up to `ttl_s`."""

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.db)

    @cached_property
    def accounts(self) -> AccountStore:
        return AccountStore(self.db)

    @cached_property
    def signing_secret(self) -> bytes:
        if self.settings.signing_secret is not None:
            return self.settings.signing_secret.get_secret_value().encode()
        path = self.settings.data_dir / "signing.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()

    def model(self, name: str) -> VideoModel:
        """One adapter instance per model name per process (weights load once)."""
        if name not in self._models:
            self._models[name] = build_model(name, self.settings)
        return self._models[name]

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics()

    @cached_property
    def bus(self) -> Bus:
        return open_bus(self.settings.resolved_database_url())

    def signal_cancel(self, job_id: str) -> None:
        """Lets an in-process worker stop at its very next step instead of its next heartbeat."""
        with self._lock:
            self._cancels.add(job_id)

    def take_cancel(self, job_id: str) -> bool:
        with self._lock:
            if job_id in self._cancels:
                self._cancels.discard(job_id)
                return True
            return False

    def close(self) -> None:
        if "bus" in self.__dict__:
            self.bus.close()
        self.db.dispose()


def build_platform(settings: Settings) -> Platform:
    engine = make_engine(
        settings.resolved_database_url(), sqlite_synchronous=settings.sqlite_synchronous
    )
    return Platform(
        settings=settings,
        db=Database(engine),
        objects=open_store(settings.resolved_storage_url()),
    )
