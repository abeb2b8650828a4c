"""A small server that speaks Cog's HTTP predictions API, for the remote adapter's tests: an
idempotent asynchronous `PUT /predictions/{id}` (repeated, it answers the current state),
webhooks (`start`, `logs`, `completed`), `POST /predictions/{id}/cancel`, and a video
predictor whose steps take `step_s` each, log a tqdm bar, and end with an MP4 (with a
stereo tone) as a `data:` URL. A prompt with "explode" fails like an out-of-memory GPU."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import av
import httpx
import numpy as np


def make_mp4(
    width: int,
    height: int,
    fps: int,
    frames: int,
    *,
    audio: bool = True,
    still: np.ndarray | None = None,
) -> bytes:
    """A ramp whose blue rises frame by frame; `still`: that RGB image in every frame."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=48_000, layout="stereo") if audio else None
        for i in range(frames):
            rgb = np.zeros((height, width, 3), dtype=np.uint8)
            rgb[..., 0] = (np.arange(width) * 255 // max(1, width - 1))[None, :]
            rgb[..., 2] = (i * 255) // max(1, frames - 1)
            if still is not None:
                rgb = still
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            n = int(48_000 * frames / fps)
            t = np.arange(n) / 48_000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            samples = np.stack([tone, tone])
            for start in range(0, n, 1024):
                chunk = np.ascontiguousarray(samples[:, start : start + 1024])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate = 48_000
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return buf.getvalue()


@dataclass
class Prediction:
    id: str
    input: dict[str, Any]
    webhook: str | None
    status: str = "starting"
    logs: str = ""
    output: str | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input": self.input,
            "status": self.status,
            "logs": self.logs,
            "output": self.output,
            "error": self.error,
        }


class CogStandIn:
    def __init__(self, step_s: float = 0.05, steps: int = 8):
        self.step_s, self.steps = step_s, steps
        self.predictions: dict[str, Prediction] = {}
        self.puts = 0
        self.cancelled: list[str] = []
        self.webhooks_sent = 0
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any] | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health-check":
                    self._answer(200, {"status": "READY"})
                else:
                    self._answer(404)

            def do_PUT(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) != 2 or parts[0] != "predictions":
                    self._answer(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prediction = standin.create(parts[1], body)
                code = 202 if self.headers.get("Prefer") == "respond-async" else 200
                self._answer(code, prediction.state())

            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[0] == "predictions" and parts[2] == "cancel":
                    found = standin.predictions.get(parts[1])
                    if found is None:
                        self._answer(404)
                        return
                    standin.cancelled.append(parts[1])
                    found.cancel.set()
                    self._answer(200, {})
                    return
                self._answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def create(self, prediction_id: str, body: dict[str, Any]) -> Prediction:
        with self._lock:
            self.puts += 1
            found = self.predictions.get(prediction_id)
            if found is not None:
                return found  # idempotent: the running prediction's current state
            prediction = Prediction(prediction_id, body["input"], body.get("webhook"))
            self.predictions[prediction_id] = prediction
        threading.Thread(target=self._run, args=(prediction,), daemon=True).start()
        return prediction

    def _hook(self, prediction: Prediction) -> None:
        if prediction.webhook:
            httpx.post(prediction.webhook, json=prediction.state(), timeout=5)
            self.webhooks_sent += 1

    def _run(self, p: Prediction) -> None:
        p.status = "processing"
        self._hook(p)
        steps = int(p.input.get("num_inference_steps", self.steps))
        for i in range(1, steps + 1):
            if p.cancel.wait(self.step_s):
                p.status = "canceled"
                self._hook(p)
                return
            pct = 100 * i // steps
            p.logs += f"\r{pct:3d}%|{'#' * (pct // 10):10s}| {i}/{steps} [00:01<00:01,  8.00it/s]"
            self._hook(p)
        if "explode" in p.input.get("prompt", ""):
            p.error, p.status = "CUDA out of memory", "failed"
            self._hook(p)
            return
        inp = p.input
        mp4 = make_mp4(
            int(inp["width"]), int(inp["height"]), int(inp["fps"]), int(inp["num_frames"])
        )
        p.output = "data:video/mp4;base64," + base64.b64encode(mp4).decode()
        p.status = "succeeded"
        self._hook(p)

    def wait_until(self, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what == "running" and any(
                p.status == "processing" and p.logs for p in self.predictions.values()
            ):
                return
            time.sleep(0.01)
        raise AssertionError(f"the stand-in never got {what}")
