"""One settings object for every process, read from `REELGEN_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClassifierSpec(BaseModel):
    """One classifier a deployment adds to the safety checks (`REELGEN_SAFETY_CLASSIFIERS`,
    a JSON list of these); see docs/safety.md."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai_moderation", "llama_guard", "python"]
    name: str | None = None
    """In verdicts and the audit log; defaults to the kind."""
    url: str | None = None
    """The endpoint (`.../v1/moderations` or `.../v1/chat/completions`)."""
    model: str | None = None
    api_key_env: str | None = None
    """The environment variable that holds the endpoint's bearer token (read at start-up)."""
    side: Literal["input", "output", "both"] = "both"
    images: bool = False
    """Whether it is sent images (the reference image, sampled output frames)."""
    nudity: bool = False
    """Whether it detects nudity in images (satisfies a fleet's output nudity check)."""
    max_frames: int | None = Field(None, ge=1)
    categories: dict[str, str] | None = None
    """Its labels -> our categories, replacing the built-in map for its kind."""
    timeout_s: float = Field(3.0, gt=0)
    retries: int = Field(2, ge=0)
    on_error: Literal["fail", "skip"] = "fail"
    """fail: no verdict without it (submit answers 503, a clip is quarantined); skip: decide
    without it, noted in the audit log."""
    factory: str | None = None
    """kind python: `module:function` returning the classifier."""
    options: dict[str, Any] = Field(default_factory=dict)
    """kind python: keyword arguments for the factory."""

    @model_validator(mode="after")
    def _needs(self) -> ClassifierSpec:
        if self.kind == "python":
            if not self.factory:
                raise ValueError("a python classifier needs factory (module:function)")
        elif not self.url or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"a {self.kind} classifier needs an http(s) url")
        if self.nudity and self.kind != "python" and not (self.images and self.on("output")):
            raise ValueError("nudity: true needs images: true and the output side")
        if self.nudity and self.on_error == "skip":
            raise ValueError(
                "a nudity classifier cannot be skipped when it fails (on_error: skip): a clip "
                "would be published without a nudity check"
            )
        return self

    def on(self, side: Literal["input", "output"]) -> bool:
        return self.side in (side, "both")


class RemoteModelSpec(BaseModel):
    """A model served by an inference service this platform does not own
    (`REELGEN_REMOTE_MODELS`, JSON: adapter name -> this); see docs/models.md."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["cog"] = "cog"
    url: str
    steps: int = Field(50, ge=1)
    seconds_per_step: float = Field(1.0, gt=0)
    inputs: dict[str, str] | None = None
    """Our field -> the predictor's input name (default: `models.cog.DEFAULT_INPUTS`)."""
    extra_input: dict[str, Any] = Field(default_factory=dict)
    poll_interval_s: float = Field(0.5, gt=0)
    timeout_s: float = Field(3600.0, gt=0)
    webhook_listen: str | None = None
    """`host:port` where the worker receives the service's webhooks; unset: it polls."""
    webhook_url: str | None = None
    polling: bool = False
    """Poll instead of webhooks: only for services that keep finished predictions."""
    styles: list[str] = Field(default_factory=list)
    sizes: list[str] | None = None
    """The sizes the service makes (default: every size the API knows)."""
    max_seconds: int | None = Field(None, ge=1)
    """The longest clip it makes (default: the API's limit)."""

    @model_validator(mode="after")
    def _url(self) -> RemoteModelSpec:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("a remote model needs an http(s) url")
        if not self.webhook_listen and not self.polling:
            raise ValueError(
                "Cog reports progress only by webhook: set webhook_listen (and webhook_url), "
                "or polling=true for a service that keeps finished predictions"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REELGEN_", extra="ignore")

    data_dir: Path = Path(".reelgen")
    database_url: str | None = None
    """Defaults to a SQLite file in the data directory."""
    storage_url: str | None = None
    """Defaults to `file://<data_dir>/objects`."""
    bootstrap_api_key: SecretStr | None = None
    signing_secret: SecretStr | None = None
    """HMAC key for signed content URLs; generated and kept in the data directory if unset."""
    public_url: str | None = None
    """Base URL printed for users; defaults to http://HOST:PORT."""
    cdn_base_url: str | None = None
    """Content redirects go to this CDN (`{base}/{key}?expires=&signature=`, signed with
    `cdn_signing_secret`; docs/storage.md) instead of the store's own URLs."""
    cdn_signing_secret: SecretStr | None = None
    provenance_cert: Path | None = None
    """PEM certificate chain (the signer first) that signs published MP4s' C2PA manifests;
    with `provenance_key`. Unset: a development CA made in the data directory."""
    provenance_key: Path | None = None

    default_model: str = "reference"
    model_names: dict[str, str] = Field(
        default_factory=lambda: {
            "sora-2": "reference",
            "sora-2-pro": "reference",
            "sora-2-2025-10-06": "reference",
            "sora-2-pro-2025-10-06": "reference",
            "sora-2-2025-12-08": "reference",
        }
    )
    """Public model name -> adapter (JSON in `REELGEN_MODEL_NAMES`). A dated name
    (`NAME-YYYY-MM-DD`) not listed here falls back to NAME. Adapter names are public too."""
    reference_steps: int = Field(30, ge=1, le=1_000_000)
    model_path: Path | None = None
    """The served model's weights (a local diffusers directory); `--model-path` sets it."""
    remote_models: dict[str, RemoteModelSpec] = Field(default_factory=dict)
    """Adapters that drive an inference service (Cog's HTTP API), by adapter name."""

    free_max_concurrent: int = Field(2, ge=1)
    free_max_per_day: int = Field(50, ge=1)
    paid_max_concurrent: int = Field(10, ge=1)
    paid_max_per_day: int = Field(1000, ge=1)
    free_gpu_seconds_per_day: float = Field(2 * 3600.0, gt=0)
    paid_gpu_seconds_per_day: float = Field(100 * 3600.0, gt=0)
    """Each user's daily budget of estimated GPU-seconds (the cost model's unit) per tier."""
    batch_max_concurrent: int = Field(10_000, ge=1)
    batch_max_per_day: int = Field(100_000, ge=1)
    batch_gpu_seconds_per_day: float = Field(1000 * 3600.0, gt=0)
    """Batch jobs (`service_tier=batch`, any key) count apart from a user's other jobs."""

    max_prompt_chars: int = Field(4000, ge=1)
    max_reference_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_reference_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_source_video_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    """An uploaded video to extend."""

    safety_block_sexual: bool = True
    """Block sexual content of adults (the mandatory categories cannot be switched off)."""
    safety_block_hate: bool = True
    safety_block_self_harm: bool = True
    safety_thresholds: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per category, `block` and/or `review` score thresholds (JSON in
    `REELGEN_SAFETY_THRESHOLDS`, e.g. `{"sexual": {"block": 0.6}}`); defaults 0.5 and 0.35."""
    safety_prompt_retention_days: int = Field(30, ge=0)
    """How long the moderation audit log keeps a prompt's text (0: only its hash)."""
    safety_threads: int = Field(4, ge=1)
    """Threads that run the input checks, off the API's event loop."""
    safety_nudity_classifier: bool | None = None
    """Output nudity detection with NudeNet (the `nudity` extra); None: when installed."""
    safety_nudity_min_score: float = Field(0.6, gt=0, le=1)
    """NudeNet detections below this do not count. At 0.45 it took 3-12 % of the reference
    model's "neon waves" clips for exposed genitals; at 0.6 none of 300 clips (docs/safety.md)."""
    safety_allow_no_nudity_classifier: bool = False
    """Lets a fleet worker start without an output nudity classifier (it refuses to)."""
    safety_hash_blocklist: Path | None = None
    """Perceptual hashes of disallowed images, `HEX CATEGORY` per line."""
    safety_transcriber: str | None = None
    """`module:function` turning a clip's audio into text for the prompt check."""
    safety_classifiers: list[ClassifierSpec] = Field(default_factory=list)
    """Classifiers added to the built-in checks (hosted moderation, Llama Guard, Python)."""
    safety_quarantine_days: int = Field(30, ge=1)
    """How long blocked outputs are kept in quarantine (for the audit) before deletion."""

    lease_seconds: float = Field(30.0, gt=0)
    heartbeat_seconds: float = Field(5.0, gt=0)
    """Lease renewal and cancel/preempt checks; progress travels on the bus more often."""
    progress_interval_seconds: float = Field(1.0, gt=0)
    checkpoint_every_steps: int = Field(5, ge=1)
    max_attempts: int = Field(3, ge=1)
    worker_poll_seconds: float = Field(0.5, gt=0)
    worker_prefetch: bool = True
    """Claim and prepare the next job (its reference image or source video) while the
    current one's last model step runs; off: only once the GPU is free."""
    controller_interval_seconds: float = Field(1.0, gt=0)
    dispatch_interval_seconds: float = Field(0.25, gt=0)
    """The dispatcher's longest pause between rounds; new work wakes it at once."""
    dispatch_min_gap_seconds: float = Field(0.02, ge=0)
    """The shortest pause between rounds: under a flood of submits one round takes many
    (what a round costs is paid per round, not per job)."""
    claim_timeout_seconds: float = Field(15.0, gt=0)
    """An assignment its worker has not claimed within this is given to another worker."""

    paid_weight: float = Field(4.0, gt=0)
    free_weight: float = Field(1.0, gt=0)
    """GPU-second shares of paid and free work while both have backlog."""
    paid_wait_target_seconds: float = Field(60.0, gt=0)
    """A paid job waiting longer may preempt free and batch work."""
    free_wait_target_seconds: float = Field(20 * 60.0, gt=0)
    """A free job waiting longer goes before anything else (the starvation bound)."""
    batch_deadline_seconds: float = Field(24 * 3600.0, gt=0)
    """How long a batch job may take from submit to done."""
    paid_running_per_user: int = Field(16, ge=1)
    free_running_per_user: int = Field(4, ge=1)
    """GPUs one user's jobs of the tier hold at once while others wait."""
    max_preemptions: int = Field(2, ge=0)
    max_batch: int = Field(8, ge=1)
    """The most jobs one model run takes together: small text-to-video clips of one size
    and length, on a model that batches (Wan text-to-video), where the cost model says a
    batch saves at least `min_batch_gain`. 1: every job runs alone."""
    min_batch_gain: float = Field(1.15, ge=1.0)

    paid_retention_days: float = Field(30, gt=0)
    free_retention_days: float = Field(7, gt=0)
    batch_retention_days: float = Field(7, gt=0)
    """How long a finished video of each tier stays downloadable (`expires_at`); then the
    controller's garbage collector deletes its objects."""
    prompt_retention_days: float = Field(30, gt=0)
    """How long a finished job keeps its prompt's text; then only its SHA-256 is kept
    (`jobs.prompt_sha256`) and the API shows `prompt: null`."""
    gc_batch: int = Field(500, ge=1)
    """Expired videos the garbage collector deletes per batch (one delete request per 333
    on S3, one transaction for their rows)."""
    gc_seconds_per_tick: float = Field(0.5, gt=0)
    """The longest one controller round spends collecting garbage; the rest waits for the
    next round, so reaping is never held up."""
    content_redirect: bool = False
    """Answer `/content` with a redirect to a signed URL instead of the bytes."""
    signed_url_ttl_seconds: int = Field(3600, ge=1)
    poll_after_ms: int = Field(1000, ge=50)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL"] = "FULL"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'reelgen.db').resolve()}"

    @model_validator(mode="after")
    def _provenance(self) -> Settings:
        if (self.provenance_cert is None) != (self.provenance_key is None):
            raise ValueError(
                "REELGEN_PROVENANCE_CERT and REELGEN_PROVENANCE_KEY go together: the signing "
                "certificate chain and its private key"
            )
        for path in (self.provenance_cert, self.provenance_key):
            if path is not None and not path.is_file():
                raise ValueError(f"the provenance file {path} does not exist")
        return self

    @model_validator(mode="after")
    def _cdn(self) -> Settings:
        if self.cdn_base_url is not None:
            if not self.cdn_base_url.startswith(("https://", "http://")):
                raise ValueError(
                    f"REELGEN_CDN_BASE_URL must be an http(s) URL, not {self.cdn_base_url!r}"
                )
            if self.cdn_signing_secret is None:
                raise ValueError(
                    "REELGEN_CDN_BASE_URL needs REELGEN_CDN_SIGNING_SECRET: the key the CDN's "
                    "edge checks each URL's signature with"
                )
        return self

    def retention_seconds(self, tier: str) -> float:
        """How long a finished video of `tier` (`paid`, `free`, `batch`) stays downloadable."""
        days = {
            "paid": self.paid_retention_days,
            "free": self.free_retention_days,
            "batch": self.batch_retention_days,
        }[tier]
        return days * 86_400.0

    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return f"file://{(self.data_dir / 'objects').resolve()}"

    @property
    def is_embedded_database(self) -> bool:
        return self.resolved_database_url().startswith("sqlite")
