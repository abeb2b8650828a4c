"""A deployment's own classifiers over HTTP, on loopback: a hosted moderation endpoint that
speaks OpenAI's `/v1/moderations` and a Llama Guard-style chat endpoint, both served by a
small stand-in server that the tests start. Covers the category mapping, images, the bearer
token, retries, what `on_error` means, and the whole path through a live server: a prompt or
a clip the endpoint flags is refused, and an endpoint that is down refuses to let anything
through unchecked (503 at submit, a quarantined clip after generation)."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from PIL import Image

from reelgen.platform import build_classifiers
from reelgen.safety.classifiers import ClassifierUnavailable, Content
from reelgen.safety.remote import Guarded, LlamaGuard, OpenAIModeration, spread
from reelgen.safety.verdict import Category
from reelgen.settings import ClassifierSpec, Settings
from reelgen.storage import keys

OPENAI_LABELS = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
]
MARKER = "zorblax"
"""Text with this word is graphic violence to the stand-in server."""


def _red(frame: np.ndarray) -> bool:
    r, g, b = (frame[..., k].mean() for k in range(3))
    return bool(r > 150 and g < 100 and b < 100)


def _image(url: str) -> np.ndarray:
    head, _, data = url.partition(",")
    assert head == "data:image/jpeg;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


@dataclass
class StandIn:
    """What the stand-in server saw and how it behaves."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    status: int = 200
    flag_red: bool = True


def _moderation(state: StandIn, body: dict[str, Any]) -> dict[str, Any]:
    scores = dict.fromkeys(OPENAI_LABELS, 0.001)
    for part in body["input"]:
        if part["type"] == "text" and MARKER in part["text"]:
            scores["violence/graphic"] = 0.97
            scores["violence"] = 0.99
        if part["type"] == "image_url":
            image = _image(part["image_url"]["url"])
            state.image_sizes.append(image.shape[:2])
            if state.flag_red and _red(image):
                scores["sexual"] = 0.91
    flags = {k: v > 0.5 for k, v in scores.items()}
    result = {"flagged": any(flags.values()), "categories": flags, "category_scores": scores}
    return {"id": "modr-1", "model": body["model"], "results": [result]}


def _guard(state: StandIn, body: dict[str, Any]) -> dict[str, Any]:
    [message] = body["messages"]
    said = "safe"
    for part in message["content"]:
        if part["type"] == "text" and MARKER in part["text"]:
            said = "unsafe\nS1,S10"
        if part["type"] == "image_url" and _red(_image(part["image_url"]["url"])):
            said = "unsafe\nS12"
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": said}}]}


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state: StandIn

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            state.auth.append(self.headers.get("Authorization"))
            if state.status != 200:
                self.send_response(state.status)
                self.end_headers()
                return
            answer = _moderation(state, body) if self.path == "/v1/moderations" else None
            if self.path == "/v1/chat/completions":
                answer = _guard(state, body)
            if answer is None:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = StandIn(f"http://127.0.0.1:{server.server_address[1]}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


def _frame(color: tuple[int, int, int], h: int = 720, w: int = 1280) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (h, w, 3)).copy()


def test_hosted_moderation_maps_categories_and_sees_images(stand_in: StandIn) -> None:
    hosted = OpenAIModeration(
        f"{stand_in.url}/v1/moderations", api_key="sk-test", images=True, max_frames=3
    )
    scores, seen = hosted.check(Content(text=f"a {MARKER} in the rain"))
    assert scores[Category.VIOLENCE_GRAPHIC] == pytest.approx(0.97)
    assert "violence" not in {c.value for c in scores if scores[c] > 0.5}  # not graphic
    assert stand_in.auth[-1] == "Bearer sk-test"
    assert stand_in.requests[-1]["model"] == "omni-moderation-latest"

    frames = [_frame((20, 120, 40)) for _ in range(9)] + [_frame((230, 20, 20))]
    scores, seen = hosted.check(Content(frames=frames))
    assert scores[Category.SEXUAL] == pytest.approx(0.91)  # the last frame is always sent
    assert seen["openai_moderation"]["requests"] == 3
    assert max(stand_in.image_sizes[-1]) == 512  # scaled down before sending

    scores, _ = hosted.check(Content(text="a quiet lake", frames=[_frame((20, 120, 40))]))
    assert max(scores.values()) < 0.01


def test_llama_guard_reads_hazard_codes(stand_in: StandIn) -> None:
    guard = LlamaGuard(f"{stand_in.url}/v1/chat/completions", images=True)
    scores, seen = guard.check(Content(text=f"the {MARKER} scene"))
    assert scores == {Category.VIOLENCE_GRAPHIC: 1.0, Category.HATE: 1.0}
    assert seen["llama_guard"]["hazards"] == ["S1", "S10"]
    assert stand_in.requests[-1]["messages"][0]["role"] == "user"
    assert guard.check(Content(text="a quiet lake")) == ({}, {"llama_guard": {"verdict": "safe"}})
    scores, _ = guard.check(Content(frames=[_frame((230, 20, 20))]))
    assert scores == {Category.SEXUAL: 1.0}
    custom = LlamaGuard(
        f"{stand_in.url}/v1/chat/completions", categories={"S1": "violence_graphic"}
    )
    assert custom.check(Content(text=MARKER))[0] == {Category.VIOLENCE_GRAPHIC: 1.0}
    with pytest.raises(ValueError, match="not a category"):
        LlamaGuard(stand_in.url, categories={"S1": "gore"})


def test_a_failing_endpoint_is_retried_then_unavailable_or_skipped(stand_in: StandIn) -> None:
    stand_in.status = 503
    hosted = OpenAIModeration(f"{stand_in.url}/v1/moderations", retries=2)
    with pytest.raises(ClassifierUnavailable, match="HTTP 503"):
        hosted.check(Content(text="a quiet lake"))
    assert len(stand_in.requests) == 3
    skipped = Guarded(hosted).check(Content(text="a quiet lake"))
    assert skipped == ({}, {"openai_moderation": {"unavailable": "HTTP 503"}})
    stand_in.status = 400
    with pytest.raises(ClassifierUnavailable, match="HTTP 400"):  # not retried
        hosted.check(Content(text="a quiet lake"))
    nowhere = LlamaGuard("http://127.0.0.1:9/v1/chat/completions", retries=0, timeout_s=1)
    with pytest.raises(ClassifierUnavailable, match="ConnectError"):
        nowhere.check(Content(text="a quiet lake"))


def test_spread_keeps_the_first_and_last_frames() -> None:
    frames = [np.full((1, 1, 3), k, dtype=np.uint8) for k in range(10)]
    assert [int(f[0, 0, 0]) for f in spread(frames, 4)] == [0, 3, 6, 9]
    assert len(spread(frames, 20)) == 10


def test_settings_build_each_side_and_check_what_they_need(
    stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOD_TOKEN", "sk-env")
    settings = Settings(
        safety_classifiers=[
            {
                "kind": "openai_moderation",
                "url": f"{stand_in.url}/v1/moderations",
                "api_key_env": "MOD_TOKEN",
                "side": "input",
            },
            {
                "kind": "llama_guard",
                "url": f"{stand_in.url}/v1/chat/completions",
                "side": "output",
                "on_error": "skip",
            },
            {
                "kind": "python",
                "factory": "tests.test_safety_remote:make_plugin",
                "options": {"word": "quokka"},
            },
        ]
    )
    inputs = build_classifiers(settings, "input")
    outputs = build_classifiers(settings, "output")
    assert [c.name for c in inputs] == ["openai_moderation", "plugin"]
    assert [c.name for c in outputs] == ["llama_guard", "plugin"]
    assert isinstance(outputs[0], Guarded) and not outputs[0].nudity
    inputs[0].check(Content(text="hello"))
    assert stand_in.auth[-1] == "Bearer sk-env"
    assert inputs[1].check(Content(text="a quokka"))[0] == {Category.HATE: 0.8}

    monkeypatch.delenv("MOD_TOKEN")
    with pytest.raises(ValueError, match="MOD_TOKEN is not set"):
        build_classifiers(settings, "input")
    with pytest.raises(ValueError, match="http"):
        ClassifierSpec(kind="llama_guard", url="ftp://example")
    with pytest.raises(ValueError, match="factory"):
        ClassifierSpec(kind="python")
    url = f"{stand_in.url}/v1/moderations"
    with pytest.raises(ValueError, match="needs images"):  # it would never see a frame
        ClassifierSpec(kind="openai_moderation", url=url, nudity=True)
    with pytest.raises(ValueError, match="cannot be skipped"):
        ClassifierSpec(kind="openai_moderation", url=url, nudity=True, images=True, on_error="skip")
    assert ClassifierSpec(kind="openai_moderation", url=url, nudity=True, images=True).nudity


@dataclass
class _Plugin:
    word: str
    name: str = "plugin"
    nudity: bool = False

    def check(self, content: Content) -> tuple[dict[Category, float], dict[str, Any]]:
        hit = content.text is not None and self.word in content.text
        return ({Category.HATE: 0.8} if hit else {}), {}


def make_plugin(word: str) -> _Plugin:
    return _Plugin(word)


def _hosted(stand_in: StandIn, **extra: object) -> list[dict[str, object]]:
    return [
        {
            "kind": "openai_moderation",
            "url": f"{stand_in.url}/v1/moderations",
            "images": True,
            "retries": 0,
            **extra,
        }
    ]


def test_submit_is_refused_by_the_hosted_endpoint_and_waits_for_it(
    start_server, stand_in: StandIn
) -> None:
    live = start_server(workers=0, safety_classifiers=_hosted(stand_in, side="input"))
    with live.client() as http:
        r = http.post("/v1/videos", json={"prompt": f"a {MARKER} at dusk", "seconds": "1"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "moderation_blocked"
        assert "violence_graphic" in error["message"] and MARKER not in error["message"]
        buf = io.BytesIO()
        Image.fromarray(_frame((230, 20, 20), 256, 256)).save(buf, format="PNG")
        r = http.post(
            "/v1/videos",
            data={"prompt": "a red room", "seconds": "1", "size": "64x64"},
            files={"input_reference": ("red.png", buf.getvalue(), "image/png")},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "input_reference", r.text
        assert http.post("/v1/videos", json={"prompt": "a quiet lake"}).status_code == 200

        stand_in.status = 503
        r = http.post("/v1/videos", json={"prompt": "a quiet lake at noon"})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "moderation_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        assert len(http.get("/v1/videos").json()["data"]) == 1  # nothing else accepted
    rows = live.platform.audit.recent(10)
    blocked = [json.loads(r["details"]) for r in rows if r["action"] == "block"]
    assert any("openai_moderation" in d for d in blocked)


def test_a_clip_the_endpoint_flags_or_cannot_check_is_never_shown(
    start_server, stand_in: StandIn
) -> None:
    from reelgen.platform import build_output_moderator

    settings = Settings(safety_classifiers=_hosted(stand_in, side="output"))
    checks = build_output_moderator(settings).checks
    stand_in.flag_red = False
    live = start_server(output_checks=checks)
    with live.client() as http:
        ok = live.wait_for(http.post("/v1/videos", json={"prompt": "a lake"}).json()["id"])
        assert ok["status"] == "completed", ok
        assert stand_in.image_sizes  # the clip's frames were sent
        stand_in.status = 503
        video = live.wait_for(http.post("/v1/videos", json={"prompt": "a hill"}).json()["id"])
        assert video["status"] == "failed"
        assert video["error"]["code"] == "moderation_unavailable"
        got = http.get(f"/v1/videos/{video['id']}/content")
        assert got.status_code == 400
    objects = live.platform.objects
    assert objects.exists(keys.quarantine(video["id"], 1))
    assert not objects.exists(keys.output(video["id"], 1, keys.Variant.VIDEO))
    [entry] = [e for e in live.platform.audit.for_job(video["id"]) if e["stage"] == "output"]
    assert json.loads(entry["details"])["unavailable"] == "openai_moderation"
