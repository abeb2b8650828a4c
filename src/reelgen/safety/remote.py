"""Classifiers a deployment adds over HTTP, behind the one classifier interface
(`safety.classifiers`): a hosted moderation endpoint that speaks OpenAI's
`POST /v1/moderations`, or a Llama Guard-style model behind an OpenAI-compatible
`POST /v1/chat/completions` (vLLM, TGI, llama.cpp serving Llama Guard 3 or 4). Either may
also see images (omni-moderation, Llama Guard Vision): the reference image at submit, the
sampled frames of a clip after generation.

Calls are synchronous on the caller's thread (the API's safety threads, the worker's
moderation step) over one pooled `httpx.Client`, with a timeout and a few retries; what a
failure means (`on_error`) is the deployment's choice: `fail` refuses to decide without the
classifier (the submit answers 503, the clip is quarantined), `skip` decides without it and
says so in the audit log.
"""

from __future__ import annotations

import base64
import importlib
import io
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from reelgen.safety.classifiers import Classifier, ClassifierUnavailable, Content, Scores
from reelgen.safety.verdict import Category

OPENAI_CATEGORIES: Mapping[str, Category] = {
    "sexual/minors": Category.SEXUAL_MINORS,
    "sexual": Category.SEXUAL,
    "hate": Category.HATE,
    "hate/threatening": Category.HATE,
    "self-harm": Category.SELF_HARM,
    "self-harm/intent": Category.SELF_HARM,
    "self-harm/instructions": Category.SELF_HARM,
    "violence/graphic": Category.VIOLENCE_GRAPHIC,
}
"""OpenAI moderation categories -> ours (plain `violence` is not graphic violence)."""

LLAMA_GUARD_CATEGORIES: Mapping[str, Category] = {
    "S1": Category.VIOLENCE_GRAPHIC,  # violent crimes
    "S3": Category.SEXUAL,  # sex-related crimes
    "S4": Category.SEXUAL_MINORS,  # child sexual exploitation
    "S5": Category.REAL_PERSON,  # defamation
    "S10": Category.HATE,
    "S11": Category.SELF_HARM,
    "S12": Category.SEXUAL,
}
"""Llama Guard 3 / 4 hazard codes (MLCommons taxonomy) -> ours."""

FRAME_SIDE = 512
"""Frames are scaled down to at most this many pixels on their longer side before sending."""


def _categories(
    mapping: Mapping[str, str] | None, default: Mapping[str, Category]
) -> dict[str, Category]:
    if mapping is None:
        return dict(default)
    out = {}
    for label, name in mapping.items():
        try:
            out[label] = Category(name)
        except ValueError:
            raise ValueError(
                f"classifier category map: {name!r} is not a category; "
                f"categories: {', '.join(c.value for c in Category)}"
            ) from None
    return out


def data_url(frame: np.ndarray) -> str:
    """A frame as a JPEG `data:` URL (what both APIs take for an image)."""
    from PIL import Image

    image = Image.fromarray(frame)
    image.thumbnail((FRAME_SIDE, FRAME_SIDE))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def spread(frames: Sequence[np.ndarray], most: int) -> list[np.ndarray]:
    """At most `most` of `frames`, evenly spaced, first and last included."""
    if len(frames) <= most:
        return list(frames)
    if most == 1:
        return [frames[0]]
    step = (len(frames) - 1) / (most - 1)
    return [frames[round(i * step)] for i in range(most)]


class _Http:
    """The transport both remote kinds share: one pooled client, retries, errors as
    `ClassifierUnavailable`."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        retries: int,
        client: httpx.Client | None = None,
    ):
        self.name, self.url, self.retries = name, url, retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(
            timeout=timeout_s, headers=headers, follow_redirects=False
        )

    def post(self, body: dict[str, Any]) -> Any:
        reason = "no answer"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.2 * 2**attempt))
            try:
                answer = self._client.post(self.url, json=body)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
                continue
            if answer.status_code == 429 or answer.status_code >= 500:
                reason = f"HTTP {answer.status_code}"
                continue
            if answer.status_code != 200:
                raise ClassifierUnavailable(
                    self.name, f"HTTP {answer.status_code}: {answer.text[:200]}"
                )
            try:
                return answer.json()
            except ValueError:
                raise ClassifierUnavailable(self.name, "the answer is not JSON") from None
        raise ClassifierUnavailable(self.name, reason)

    def close(self) -> None:
        self._client.close()


class OpenAIModeration:
    """`POST {url}` with `{model, input: [text and/or image parts]}`; the results'
    `category_scores` are mapped to our categories (highest score per category)."""

    nudity: bool

    def __init__(
        self,
        url: str,
        *,
        name: str = "openai_moderation",
        model: str = "omni-moderation-latest",
        api_key: str | None = None,
        images: bool = False,
        nudity: bool = False,
        max_frames: int = 8,
        categories: Mapping[str, str] | None = None,
        timeout_s: float = 3.0,
        retries: int = 2,
        client: httpx.Client | None = None,
    ):
        self.name, self.model, self.images, self.nudity = name, model, images, nudity
        self.max_frames = max_frames
        self.categories = _categories(categories, OPENAI_CATEGORIES)
        self._http = _Http(
            name, url, api_key=api_key, timeout_s=timeout_s, retries=retries, client=client
        )

    def check(self, content: Content) -> tuple[Scores, dict[str, Any]]:
        requests: list[list[dict[str, Any]]] = []
        if content.text:
            requests.append([{"type": "text", "text": content.text}])
        if self.images:
            for frame in spread(content.frames, self.max_frames):
                requests.append([{"type": "image_url", "image_url": {"url": data_url(frame)}}])
        scores: Scores = {}
        flagged = 0
        for parts in requests:
            answer = self._http.post({"model": self.model, "input": parts})
            try:
                results = answer["results"]
                for result in results:
                    flagged += bool(result.get("flagged"))
                    for label, s in result["category_scores"].items():
                        category = self.categories.get(label)
                        if category is not None:
                            scores[category] = max(scores.get(category, 0.0), float(s))
            except (KeyError, TypeError, ValueError):
                raise ClassifierUnavailable(self.name, "unexpected answer shape") from None
        if not requests:
            return {}, {}
        return scores, {self.name: {"requests": len(requests), "flagged": flagged}}


class LlamaGuard:
    """`POST {url}` (chat completions) with the content as the user's turn; the model's
    answer is `safe`, or `unsafe` and a line of hazard codes (`S1,S10`), each mapped to a
    category with score 1. The server applies the model's chat template (its policy)."""

    nudity: bool

    def __init__(
        self,
        url: str,
        *,
        name: str = "llama_guard",
        model: str = "meta-llama/Llama-Guard-3-8B",
        api_key: str | None = None,
        images: bool = False,
        nudity: bool = False,
        max_frames: int = 1,  # Llama Guard 3 Vision takes one image a conversation
        categories: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        retries: int = 2,
        client: httpx.Client | None = None,
    ):
        self.name, self.model, self.images, self.nudity = name, model, images, nudity
        self.max_frames = max_frames
        self.categories = _categories(categories, LLAMA_GUARD_CATEGORIES)
        self._http = _Http(
            name, url, api_key=api_key, timeout_s=timeout_s, retries=retries, client=client
        )

    def check(self, content: Content) -> tuple[Scores, dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if content.text:
            parts.append({"type": "text", "text": content.text})
        if self.images:
            for frame in spread(content.frames, self.max_frames):
                parts.append({"type": "image_url", "image_url": {"url": data_url(frame)}})
        if not parts:
            return {}, {}
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": 20,
            "temperature": 0,
        }
        answer = self._http.post(body)
        try:
            said = str(answer["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError):
            raise ClassifierUnavailable(self.name, "unexpected answer shape") from None
        verdict, _, codes = said.partition("\n")
        verdict = verdict.strip().lower()
        if verdict == "safe":
            return {}, {self.name: {"verdict": "safe"}}
        if verdict != "unsafe":
            raise ClassifierUnavailable(
                self.name, f"answer is neither safe nor unsafe: {said[:80]!r}"
            )
        hazards = [c.strip().upper() for c in codes.replace(" ", ",").split(",") if c.strip()]
        scores: Scores = {}
        for code in hazards:
            category = self.categories.get(code)
            if category is not None:
                scores[category] = 1.0
        return scores, {self.name: {"verdict": "unsafe", "hazards": hazards}}


class Guarded:
    """A classifier whose failures are skipped (`on_error: skip`): the verdict is made
    without it, and the audit log records that it did not answer."""

    def __init__(self, inner: Classifier):
        self.inner = inner
        self.name = inner.name
        self.nudity = False  # a check that may be skipped never counts as the nudity check

    def check(self, content: Content) -> tuple[Scores, dict[str, Any]]:
        try:
            return self.inner.check(content)
        except ClassifierUnavailable as exc:
            return {}, {self.name: {"unavailable": exc.reason}}


def load_factory(spec: str, options: Mapping[str, Any]) -> Classifier:
    """A deployment's own classifier: `package.module:factory`, called with `options`."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"a python classifier's factory must be module:function, not {spec!r}")
    factory = getattr(importlib.import_module(module), attr)
    classifier = factory(**options)
    missing = [a for a in ("name", "nudity", "check") if not hasattr(classifier, a)]
    if missing:
        raise ValueError(f"{spec} made a classifier without {', '.join(missing)}")
    return classifier  # type: ignore[no-any-return]
