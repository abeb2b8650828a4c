"""The reference image's check at submit: the same image checks as the output side (faces,
nudity when NudeNet is installed, the hash blocklist) on the uploaded image. A face is taken
for a real person's: it is refused unless the key records consent to depict people."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from reelgen.safety.classifiers import Classifier, Content, merge
from reelgen.safety.text import SafetyPolicy
from reelgen.safety.verdict import Category, Verdict, decide

IMAGE_POLICY = "image-1"
CHECK_SIDE = 640
"""The image is scaled down to at most this many pixels on its longer side first."""


@dataclass
class ImageModerator:
    policy: SafetyPolicy
    checks: list[Classifier] = field(default_factory=list)

    @property
    def version(self) -> str:
        return f"{IMAGE_POLICY}[{'+'.join(c.name for c in self.checks) or 'none'}]"

    def check(
        self, data: bytes, *, consent: bool, minor_in_prompt: bool, adult: bool = False
    ) -> Verdict:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image.thumbnail((CHECK_SIDE, CHECK_SIDE))
        frame = np.asarray(image)
        scores = dict.fromkeys(Category, 0.0)
        details: dict[str, Any] = {"size": list(image.size)}
        merge(scores, details, self.checks, Content(frames=[frame]))
        if details.get("frames_with_faces") and not consent:
            scores[Category.REAL_PERSON] = 1.0
        if minor_in_prompt and scores[Category.SEXUAL]:
            scores[Category.SEXUAL_MINORS] = scores[Category.SEXUAL]
        return decide(
            scores,
            self.policy.thresholds,
            self.policy.enabled_for(adult),
            self.version,
            stage="input_image",
            details=details,
        )

    @staticmethod
    def has_face(verdict: Verdict) -> bool:
        return bool(verdict.details.get("frames_with_faces"))
