"""Wires settings into the long-lived pieces a process uses; everything is built at start-up."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Literal, TypeVar

from reelgen.domain.jobs import User
from reelgen.media.provenance import DEV_CHAIN, DEV_KEY, ProvenanceSigner, make_dev_ca
from reelgen.models.base import VideoModel
from reelgen.models.registry import available, build_model, served
from reelgen.observability.metrics import Metrics
from reelgen.safety.classifiers import Classifier
from reelgen.safety.image import ImageModerator
from reelgen.safety.output import (
    NudeNetNudity,
    OutputModerator,
    build_checks,
    load_transcriber,
    nudity_available,
)
from reelgen.safety.remote import Guarded, LlamaGuard, OpenAIModeration, load_factory
from reelgen.safety.text import SafetyPolicy, TextModerator
from reelgen.safety.verdict import MANDATORY, Category, Thresholds
from reelgen.settings import Settings
from reelgen.storage.base import ObjectStore, open_store
from reelgen.store.accounts import AccountStore
from reelgen.store.audit import AuditStore
from reelgen.store.database import Database, make_engine
from reelgen.store.jobs import JobStore
from reelgen.store.notify import ALL_CHANNELS, Bus, open_bus

log = logging.getLogger("reelgen.platform")

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


@dataclass(kw_only=True)
class Core:
    """What every process role uses: the database and its job store, object storage, the
    bus and metrics. The roles below add only what each of them needs."""

    settings: Settings
    db: Database
    jobs: JobStore
    audit: AuditStore
    """The moderation audit log (input checks on the API, output checks on workers)."""
    objects: ObjectStore
    bus: Bus
    metrics: Metrics
    clock: Callable[[], float] = time.time

    def close(self) -> None:
        self.bus.close()
        self.db.dispose()


@dataclass(kw_only=True)
class ApiContext(Core):
    """An API replica: accounts and their key cache, the adapter catalogue (styles, cost
    estimates; nothing loaded), the URL signing secret, and the input safety check with the
    threads it runs on (off the event loop)."""

    accounts: AccountStore
    models: dict[str, VideoModel]
    signing_secret: bytes
    moderator: TextModerator
    image_moderator: ImageModerator
    safety_pool: ThreadPoolExecutor
    key_cache: TTLCache[str, User] = field(default_factory=lambda: TTLCache(ttl_s=30.0))
    """API key hash -> user; a revoked key may keep working for up to `ttl_s`."""

    def model(self, name: str) -> VideoModel:
        return self.models[name]

    def close(self) -> None:
        self.safety_pool.shutdown(wait=False, cancel_futures=True)
        super().close()


@dataclass(kw_only=True)
class WorkerContext(Core):
    """A worker: the adapters it serves (one on its accelerator at a time, the others
    parked in host memory), which it loads, and the output checks."""

    models: dict[str, VideoModel]
    """By adapter name; the first is on the accelerator when the worker starts."""
    output_moderator: OutputModerator
    provenance: ProvenanceSigner
    """Signs each published MP4's C2PA manifest."""


def _core_fields(core: Core) -> dict[str, Any]:
    return {f.name: getattr(core, f.name) for f in fields(Core)}


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


def load_provenance_signer(settings: Settings) -> ProvenanceSigner:
    """The operator's certificate chain and key, or a development CA and signer made once
    in the data directory (`provenance/`)."""
    from importlib.metadata import version

    chain, key = settings.provenance_cert, settings.provenance_key
    if chain is None or key is None:
        directory = settings.data_dir / "provenance"
        chain, key = directory / DEV_CHAIN, directory / DEV_KEY
        if not (chain.exists() and key.exists()):
            make_dev_ca(directory)
            log.warning(
                "no REELGEN_PROVENANCE_CERT / _KEY: signing with a development CA made in %s",
                directory,
            )
    return ProvenanceSigner.from_files(chain, key, version=version("reelgen"))


def build_core(settings: Settings, *, listen: frozenset[str] = ALL_CHANNELS) -> Core:
    """`listen`: the bus channels the process's role uses (all for one process that is
    every role)."""
    engine = make_engine(
        settings.resolved_database_url(), sqlite_synchronous=settings.sqlite_synchronous
    )
    db = Database(engine)
    return Core(
        settings=settings,
        db=db,
        jobs=JobStore(db),
        audit=AuditStore(db),
        objects=open_store(
            settings.resolved_storage_url(), signing_secret=load_signing_secret(settings)
        ),
        bus=open_bus(settings.resolved_database_url(), listen),
        metrics=Metrics(),
    )


def build_catalog(settings: Settings) -> dict[str, VideoModel]:
    """Every adapter the public model names can reach, unloaded; a name that points at no
    adapter stops the start-up instead of failing its first request."""
    adapters = available(settings)
    named = {*settings.model_names.values(), settings.default_model}
    missing = sorted(a for a in named if a not in adapters)
    if missing:
        raise ValueError(
            f"REELGEN_MODEL_NAMES or REELGEN_DEFAULT_MODEL points at unknown adapters "
            f"{missing}; available: {', '.join(adapters)}"
        )
    return {name: build_model(name, settings) for name in served(settings)}


def safety_policy(settings: Settings) -> SafetyPolicy:
    """The deployment's safety choices; a bad threshold or category name stops the start."""
    optional = {
        Category.SEXUAL: settings.safety_block_sexual,
        Category.HATE: settings.safety_block_hate,
        Category.SELF_HARM: settings.safety_block_self_harm,
    }
    enabled = frozenset(MANDATORY) | {c for c, on in optional.items() if on}
    thresholds = dict.fromkeys(Category, Thresholds())
    for name, values in settings.safety_thresholds.items():
        try:
            category = Category(name)
        except ValueError:
            raise ValueError(
                f"REELGEN_SAFETY_THRESHOLDS names unknown category {name!r}; "
                f"categories: {', '.join(c.value for c in Category)}"
            ) from None
        unknown = set(values) - {"block", "review"}
        if unknown:
            raise ValueError(f"REELGEN_SAFETY_THRESHOLDS[{name!r}] takes block and review only")
        t = Thresholds(**{**{"block": 0.5, "review": 0.35}, **values})
        if not 0.0 < t.review <= t.block <= 1.0:
            raise ValueError(f"REELGEN_SAFETY_THRESHOLDS[{name!r}]: need 0 < review <= block <= 1")
        thresholds[category] = t
    return SafetyPolicy(enabled=enabled, thresholds=thresholds)


_moderators: dict[str, TextModerator] = {}
_moderators_lock = threading.Lock()


def build_moderator(settings: Settings, *, learned: bool = True) -> TextModerator:
    """The prompt check, trained once per process and policy (API replicas in one process,
    as in tests, share it); `learned=False`: its rules only."""
    policy = safety_policy(settings)
    key = f"{policy.key()}|{learned}"
    with _moderators_lock:
        moderator = _moderators.get(key)
        if moderator is None:
            moderator = _moderators[key] = TextModerator(policy, learned=learned)
        return moderator


def build_classifiers(settings: Settings, side: Literal["input", "output"]) -> list[Classifier]:
    """The deployment's own classifiers for one side (`REELGEN_SAFETY_CLASSIFIERS`)."""
    out: list[Classifier] = []
    for spec in settings.safety_classifiers:
        if not spec.on(side):
            continue
        classifier: Classifier
        if spec.kind == "python":
            assert spec.factory is not None
            classifier = load_factory(spec.factory, spec.options)
        else:
            api_key = None
            if spec.api_key_env:
                api_key = os.environ.get(spec.api_key_env)
                if not api_key:
                    raise ValueError(
                        f"safety classifier {spec.name or spec.kind}: {spec.api_key_env} is not set"
                    )
            kind = OpenAIModeration if spec.kind == "openai_moderation" else LlamaGuard
            assert spec.url is not None
            options: dict[str, Any] = {
                "name": spec.name or spec.kind,
                "api_key": api_key,
                "images": spec.images,
                "nudity": spec.nudity,
                "categories": spec.categories,
                "timeout_s": spec.timeout_s,
                "retries": spec.retries,
            }
            if spec.model:
                options["model"] = spec.model
            if spec.max_frames:
                options["max_frames"] = spec.max_frames
            classifier = kind(spec.url, **options)
        out.append(Guarded(classifier) if spec.on_error == "skip" else classifier)
    return out


def api_context(core: Core, catalog: dict[str, VideoModel] | None = None) -> ApiContext:
    """The API's view of `core` (shared with other roles in `reelgen serve`)."""
    own = build_classifiers(core.settings, "input")
    moderator = build_moderator(core.settings).with_classifiers(own)
    core.db.start_group_commit()
    return ApiContext(
        **_core_fields(core),
        accounts=AccountStore(core.db),
        models=catalog if catalog is not None else build_catalog(core.settings),
        signing_secret=load_signing_secret(core.settings),
        moderator=moderator,
        image_moderator=ImageModerator(
            safety_policy(core.settings),
            build_checks(
                nudity=nudity_detector(core.settings),
                blocklist=core.settings.safety_hash_blocklist,
            )
            + own,
        ),
        safety_pool=ThreadPoolExecutor(
            core.settings.safety_threads, thread_name_prefix="reelgen-safety"
        ),
    )


def _nudity_wanted(settings: Settings) -> bool:
    nudity = settings.safety_nudity_classifier
    if nudity is None:
        return nudity_available()
    if nudity and not nudity_available():
        raise ValueError(
            "REELGEN_SAFETY_NUDITY_CLASSIFIER=true but NudeNet is not installed "
            "(pip install 'reelgen[nudity]')"
        )
    return nudity


_nudity: list[NudeNetNudity] = []


def nudity_detector(settings: Settings) -> NudeNetNudity | None:
    """NudeNet, loaded once per process (the API's image check and an in-process worker's
    output check share its ONNX session, which runs concurrent calls); None when not
    wanted."""
    if not _nudity_wanted(settings):
        return None
    with _moderators_lock:
        if not _nudity:
            _nudity.append(NudeNetNudity(min_score=settings.safety_nudity_min_score))
        return _nudity[0]


def build_output_moderator(settings: Settings) -> OutputModerator:
    """The output checks: faces always, nudity when NudeNet is installed (or as the
    settings say), the hash blocklist when one is configured, the transcriber hook."""
    return OutputModerator(
        policy=safety_policy(settings),
        # the full check only for transcripts; the prompt is read for whom it names
        text=build_moderator(settings, learned=settings.safety_transcriber is not None),
        checks=build_checks(
            nudity=nudity_detector(settings), blocklist=settings.safety_hash_blocklist
        )
        + build_classifiers(settings, "output"),
        transcriber=load_transcriber(settings.safety_transcriber),
    )


def worker_context(
    core: Core, models: Sequence[VideoModel], output_moderator: OutputModerator | None = None
) -> WorkerContext:
    by_name = {m.name: m for m in models}
    if not by_name or len(by_name) != len(models):
        raise ValueError(f"a worker serves one or more distinct models, not {len(models)}")
    return WorkerContext(
        **_core_fields(core),
        models=by_name,
        output_moderator=output_moderator or build_output_moderator(core.settings),
        provenance=load_provenance_signer(core.settings),
    )


def build_api(settings: Settings, *, listen: frozenset[str] = ALL_CHANNELS) -> ApiContext:
    """An API context over a core of its own (`reelgen api`, tools, tests)."""
    catalog = build_catalog(settings)  # first: a bad configuration stops before connecting
    return api_context(build_core(settings, listen=listen), catalog)
