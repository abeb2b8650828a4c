"""Wires settings into the long-lived pieces a process uses; everything is built at start-up."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from reelgen.domain.jobs import User
from reelgen.models.base import VideoModel
from reelgen.models.registry import AVAILABLE, build_model
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
    jobs: JobStore
    accounts: AccountStore
    objects: ObjectStore
    bus: Bus
    metrics: Metrics
    signing_secret: bytes
    models: dict[str, VideoModel]
    """Adapters by name, not loaded: the API asks them for styles and cost estimates; a
    worker loads the one it serves."""
    clock: Callable[[], float] = time.time
    policy: Policy = field(default_factory=Policy)
    key_cache: TTLCache[str, User] = field(default_factory=lambda: TTLCache(ttl_s=30.0))
    """API key hash -> user; a revoked key may keep working for up to `ttl_s`."""

    def model(self, name: str) -> VideoModel:
        return self.models[name]

    def close(self) -> None:
        self.bus.close()
        self.db.dispose()


def load_signing_secret(settings: Settings) -> bytes:
    """The configured secret, or one generated once and kept in the data directory."""
    if settings.signing_secret is not None:
        return settings.signing_secret.get_secret_value().encode()
    path = settings.data_dir / "signing.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def build_platform(settings: Settings) -> Platform:
    engine = make_engine(
        settings.resolved_database_url(), sqlite_synchronous=settings.sqlite_synchronous
    )
    db = Database(engine)
    secret = load_signing_secret(settings)
    return Platform(
        settings=settings,
        db=db,
        jobs=JobStore(db),
        accounts=AccountStore(db),
        objects=open_store(settings.resolved_storage_url(), signing_secret=secret),
        bus=open_bus(settings.resolved_database_url()),
        metrics=Metrics(),
        signing_secret=secret,
        models={name: build_model(name, settings) for name in AVAILABLE},
    )
