"""A model we do not serve: a worker drives an inference service that speaks Cog's HTTP
predictions API (a Cog container, or anything compatible), with the same progress, cancel,
lease and output handling as a local model.

One job is one prediction, created idempotently (`PUT /predictions/{id}`, `Prefer:
respond-async`, the id derived from the job's attempt, so a worker that retries after a lost
answer finds the same prediction). Its state arrives either by the service's webhook (Cog's
documented way; the worker listens on `webhook_listen` and gives the service
`webhook_url`) or by polling (repeating the idempotent PUT, which answers the prediction's
current state). Progress is read from the prediction's logs (the `i/N` of a tqdm bar, as
diffusers prints it). Cancel, preempt and drain cancel the prediction
(`POST /predictions/{id}/cancel`); a remote run cannot be resumed, so it keeps no
checkpoints. The output (a video file as a `data:` URL or an http(s) URL) is downloaded and
decoded with PyAV, and goes on like any model's frames: encode, output moderation, upload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from reelgen.domain.jobs import MAX_SECONDS, SIZES
from reelgen.media.decode import read_audio, read_frames
from reelgen.models.base import (
    Clip,
    Conditioning,
    GenerationSpec,
    StepCallback,
    StepInfo,
    made_without_device,
)

log = logging.getLogger("reelgen.models.cog")

SAMPLE_RATE = 48_000
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
_TQDM = re.compile(r"(\d+)/(\d+) \[")
"""A tqdm bar's `i/N [elapsed<left, rate]`."""

DEFAULT_INPUTS: Mapping[str, str] = {
    "prompt": "prompt",
    "num_frames": "num_frames",
    "fps": "fps",
    "width": "width",
    "height": "height",
    "seed": "seed",
    "reference_image": "image",
    "source_video": "",
    "steps": "num_inference_steps",
}
"""Our field -> the predictor's input name; a field mapped to "" is not sent (and the model
is offered for no request that needs it: a service that edits videos maps `source_video`)."""


@dataclass(frozen=True, slots=True)
class CogConfig:
    url: str
    """The service's base URL (`.../predictions` is appended)."""
    steps: int = 50
    """Denoising steps the service runs (sent as `num_inference_steps`), for progress."""
    seconds_per_step: float = 1.0
    """For ETAs and scheduling: the service's seconds per step at 720p."""
    inputs: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_INPUTS))
    extra_input: Mapping[str, Any] = field(default_factory=dict)
    """Constant inputs sent with every prediction (guidance, negative prompt, ...)."""
    poll_interval_s: float = 0.5
    timeout_s: float = 3600.0
    """A prediction that has not ended by then is cancelled and the attempt fails."""
    request_timeout_s: float = 30.0
    webhook_listen: str | None = None
    """`host:port` to receive the service's webhooks on (Cog's documented way)."""
    polling: bool = False
    """Poll by repeating the idempotent PUT instead: only for services that keep a finished
    prediction's state (Cog itself answers a PUT after the end with a new prediction)."""
    silence_s: float = 600.0
    """With webhooks: a prediction that says nothing for this long is given up (cancelled)."""
    webhook_url: str | None = None
    """The URL the service reaches that listener at (default: http://host:port)."""
    styles: frozenset[str] = frozenset()
    fps: int = 24
    sizes: frozenset[str] = frozenset(SIZES)
    max_seconds: int = MAX_SECONDS


class CogModel:
    """`VideoModel` over a Cog HTTP service."""

    def __init__(self, name: str, config: CogConfig):
        self.name = name
        self.config = config
        self.styles = config.styles
        self.fps = config.fps
        self.sizes = config.sizes
        self.max_seconds = config.max_seconds
        self.accepts = frozenset(
            kind
            for kind, field_name in (
                (Conditioning.IMAGE, "reference_image"),
                (Conditioning.VIDEO, "source_video"),
            )
            if config.inputs.get(field_name)
        )
        self.requires: frozenset[Conditioning] = frozenset()
        self._client: httpx.Client | None = None
        self._inbox: _WebhookInbox | None = None

    def load(self) -> None:
        """Connects (the weights are the service's); starts the webhook listener. Once:
        after `park` there is nothing to bring back."""
        if self._client is not None:
            return
        if not self.config.webhook_listen and not self.config.polling:
            raise ValueError(
                f"{self.name}: Cog reports a prediction's progress only by webhook: set "
                "webhook_listen (and webhook_url), or polling=true for a service that keeps "
                "finished predictions"
            )
        self._client = httpx.Client(timeout=self.config.request_timeout_s)
        if self.config.webhook_listen:
            self._inbox = _WebhookInbox(self.config.webhook_listen, self.config.webhook_url)

    def park(self) -> None:
        """Nothing to move: the service holds the weights."""

    def num_steps(self, spec: GenerationSpec) -> int:
        return self.config.steps

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        scale = spec.width * spec.height * spec.num_frames / (1280 * 720 * 24 * 5)
        return self.config.steps * self.config.seconds_per_step * max(0.05, scale)

    # ---- one prediction ---------------------------------------------------------------
    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        if resume_from is not None:
            raise ValueError("a remote prediction cannot be resumed from a checkpoint")
        if self._client is None:
            self.load()
        prediction_id = _prediction_id(spec)
        body: dict[str, Any] = {"input": self._input(spec)}
        if self._inbox is not None:
            body["webhook"] = self._inbox.url_for(prediction_id)
            body["webhook_events_filter"] = ["start", "logs", "completed"]
        deadline = time.monotonic() + self.config.timeout_s
        step, total = 0, self.config.steps
        state = self._put(prediction_id, body, deadline)
        heard = time.monotonic()
        try:
            while state.get("status") not in TERMINAL:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(
                        f"the prediction did not end within {self.config.timeout_s:g} s"
                    )
                if self._inbox is not None and now - heard > self.config.silence_s:
                    raise TimeoutError(
                        f"the inference service sent nothing for {self.config.silence_s:g} s"
                    )
                step, total = _progress(state.get("logs"), step, total)
                on_step(StepInfo(min(step, total - 1), total, None))
                fresh = self._next_state(prediction_id, body, deadline)
                if fresh is not None:
                    state, heard = fresh, time.monotonic()
        except BaseException:
            self._cancel(prediction_id)
            raise
        finally:
            if self._inbox is not None:
                self._inbox.forget(prediction_id)
        status = state["status"]
        if status != "succeeded":
            raise RuntimeError(f"the inference service's prediction {status}: {state.get('error')}")
        on_step(StepInfo(total, total, None))
        return self._clip(spec, state.get("output"))

    def _input(self, spec: GenerationSpec) -> dict[str, Any]:
        values: dict[str, Any] = {
            "prompt": spec.prompt,
            "num_frames": spec.num_frames,
            "fps": spec.fps,
            "width": spec.width,
            "height": spec.height,
            "seed": spec.seed,
            "steps": self.config.steps,
            "reference_image": (
                "data:image/png;base64," + base64.b64encode(spec.reference_image).decode()
                if spec.reference_image
                else None
            ),
            "source_video": (
                "data:video/mp4;base64," + base64.b64encode(spec.source_video.read_bytes()).decode()
                if spec.source_video is not None and self.config.inputs.get("source_video")
                else None
            ),
        }
        out = dict(self.config.extra_input)
        for ours, theirs in self.config.inputs.items():
            if theirs and values.get(ours) is not None:
                out[theirs] = values[ours]
        return out

    def _put(self, prediction_id: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        assert self._client is not None
        attempt = 0
        while True:
            try:
                answer = self._client.put(
                    f"{self.config.url}/predictions/{prediction_id}",
                    json=body,
                    headers={"Prefer": "respond-async"},
                )
            except httpx.TransportError as exc:
                if attempt == 3:
                    raise RuntimeError(f"the inference service is unreachable: {exc}") from exc
                time.sleep(0.5 * 2**attempt)
                attempt += 1
                continue
            if answer.status_code == 409:  # every slot busy: wait for one, to the deadline
                if time.monotonic() > deadline:
                    raise RuntimeError("the inference service had no free prediction slot")
                time.sleep(self.config.poll_interval_s)
                continue
            if answer.status_code not in (200, 201, 202):
                raise RuntimeError(
                    f"the inference service answered {answer.status_code}: {answer.text[:300]}"
                )
            return dict(answer.json())

    def _next_state(
        self, prediction_id: str, body: dict[str, Any], deadline: float
    ) -> dict[str, Any] | None:
        """The prediction's next state: from its webhook, or polled; None if nothing new
        came within the poll interval (the caller checks cancel and the lease meanwhile)."""
        if self._inbox is not None:
            return self._inbox.wait(prediction_id, self.config.poll_interval_s)
        time.sleep(self.config.poll_interval_s)
        return self._put(prediction_id, body, deadline)

    def _cancel(self, prediction_id: str) -> None:
        if self._client is None:
            return
        try:
            self._client.post(f"{self.config.url}/predictions/{prediction_id}/cancel")
        except httpx.HTTPError as exc:
            log.warning("could not cancel prediction %s: %s", prediction_id, exc)

    # ---- its output -------------------------------------------------------------------
    def _clip(self, spec: GenerationSpec, output: Any) -> Clip:
        if isinstance(output, list):
            output = output[-1] if output else None
        if not isinstance(output, str):
            raise RuntimeError(f"the prediction's output is not a file URL: {output!r:.100}")
        path = self._download(output)
        try:
            audio = read_audio(path, spec.seconds * SAMPLE_RATE, SAMPLE_RATE)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        return Clip(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=spec.num_frames,
            frames=_frames(path, spec),
            audio=audio,
            sample_rate=SAMPLE_RATE,
            decoded=made_without_device(),  # read from the downloaded file
        )

    def _download(self, url: str) -> Path:
        with tempfile.NamedTemporaryFile(
            prefix="reelgen-cog-", suffix=".mp4", delete=False
        ) as handle:
            path = Path(handle.name)
            try:
                if url.startswith("data:"):
                    _, _, data = url.partition(",")
                    handle.write(base64.b64decode(data))
                elif url.startswith(("http://", "https://")):
                    assert self._client is not None
                    with self._client.stream("GET", url) as answer:
                        answer.raise_for_status()
                        for chunk in answer.iter_bytes(1 << 20):
                            handle.write(chunk)
                else:
                    raise RuntimeError(f"cannot fetch the prediction's output from {url[:40]!r}")
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        return path


def _prediction_id(spec: GenerationSpec) -> str:
    """Stable for one attempt of one job (a retried PUT finds the same prediction)."""
    key = spec.run_id or f"{spec.prompt}:{spec.seed}:{time.time_ns()}"
    return hashlib.sha256(key.encode()).hexdigest()[:26]


def _progress(logs: Any, step: int, total: int) -> tuple[int, int]:
    """The last tqdm `i/N` in the logs, never going back."""
    if not isinstance(logs, str):
        return step, total
    found = _TQDM.findall(logs[-4000:])
    if not found:
        return step, total
    done, of = (int(n) for n in found[-1])
    if of <= 0:
        return step, total
    return max(step, round(done * total / of)), total


def _frames(path: Path, spec: GenerationSpec) -> Iterator[np.ndarray]:
    """The service's video as the job's frames; the file is removed once read."""
    try:
        yield from read_frames(path, spec.width, spec.height, spec.num_frames)
    finally:
        path.unlink(missing_ok=True)


class _WebhookInbox:
    """The worker's listener for the service's webhooks: the latest state per prediction."""

    def __init__(self, listen: str, public_url: str | None):
        host, _, port = listen.rpartition(":")
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                prediction_id = parts[1] if len(parts) == 3 and parts[0] == "webhooks" else ""
                if not inbox.expects(prediction_id, parts[-1]):
                    self.send_response(404)  # not a prediction of ours, or a forged secret
                    self.end_headers()
                    return
                try:
                    state = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                except (ValueError, TypeError, KeyError):
                    self.send_response(400)
                    self.end_headers()
                    return
                inbox.deliver(prediction_id, state)
                self.send_response(200)
                self.end_headers()

        self._server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
        bound = self._server.server_address[1]
        self.base = (public_url or f"http://{host or '127.0.0.1'}:{bound}").rstrip("/")
        self._states: dict[str, dict[str, Any]] = {}
        self._secrets: dict[str, str] = {}
        self._fresh: set[str] = set()
        self._changed = threading.Condition()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url_for(self, prediction_id: str) -> str:
        """The prediction's webhook URL, with a secret only the service is told."""
        with self._changed:
            secret = self._secrets.setdefault(prediction_id, secrets.token_urlsafe(24))
        return f"{self.base}/webhooks/{prediction_id}/{secret}"

    def expects(self, prediction_id: str, secret: str) -> bool:
        with self._changed:
            known = self._secrets.get(prediction_id)
        return known is not None and hmac.compare_digest(known, secret)

    def deliver(self, prediction_id: str, state: dict[str, Any]) -> None:
        with self._changed:
            previous = self._states.get(prediction_id)
            if previous is not None and previous.get("status") in TERMINAL:
                return  # a late `logs` webhook never undoes the end
            self._states[prediction_id] = state
            self._fresh.add(prediction_id)
            self._changed.notify_all()

    def wait(self, prediction_id: str, timeout: float) -> dict[str, Any] | None:
        with self._changed:
            self._changed.wait_for(lambda: prediction_id in self._fresh, timeout)
            if prediction_id not in self._fresh:
                return None
            self._fresh.discard(prediction_id)
            return self._states[prediction_id]

    def forget(self, prediction_id: str) -> None:
        with self._changed:
            self._secrets.pop(prediction_id, None)
            self._states.pop(prediction_id, None)
            self._fresh.discard(prediction_id)
