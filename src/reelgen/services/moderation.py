"""Input safety at submit: the prompt check (on the safety threads, off the event loop),
its audit row, and the refusal a block turns into."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from reelgen.domain.errors import ModerationBlocked, ModerationUnavailable
from reelgen.domain.jobs import User
from reelgen.platform import ApiContext
from reelgen.safety.classifiers import ClassifierUnavailable
from reelgen.safety.verdict import DESCRIPTIONS, Verdict


def check_input(
    platform: ApiContext,
    prompt: str,
    style: str | None,
    images: Sequence[bytes],
    *,
    consent: bool,
    adult: bool = False,
) -> list[Verdict]:
    """Each image's verdict, in order, then the prompt's (a face in any image makes the
    prompt's person rules apply to whoever it shows). `images`: the reference image, or
    frames of a video to edit. `adult`: the user is a verified adult (`ADULT` categories
    the deployment allows apply only then)."""
    try:
        return _check_input(platform, prompt, style, images, consent=consent, adult=adult)
    except ClassifierUnavailable as exc:
        raise ModerationUnavailable(
            f"Content moderation is unavailable right now ({exc.name} did not answer); "
            "nothing was accepted, try again shortly.",
            retry_after=5,
        ) from exc


def _check_input(
    platform: ApiContext,
    prompt: str,
    style: str | None,
    images: Sequence[bytes],
    *,
    consent: bool,
    adult: bool,
) -> list[Verdict]:
    text = platform.moderator.check(prompt, style=style, consent=consent, adult=adult)
    if not images:
        return [text]
    minor = bool(text.details.get("minor"))
    pictured = [
        platform.image_moderator.check(image, consent=consent, minor_in_prompt=minor, adult=adult)
        for image in images
    ]
    if any(platform.image_moderator.has_face(v) for v in pictured):
        text = platform.moderator.check(
            prompt, style=style, consent=consent, reference_face=True, adult=adult
        )
    return [*pictured, text]  # on a tie the refusal names an image


def worst(verdicts: list[Verdict]) -> Verdict:
    out = verdicts[0]
    for v in verdicts[1:]:
        out = out.worst(v)
    return out


def audit_rows(
    platform: ApiContext,
    verdicts: list[Verdict],
    *,
    user: User,
    prompt: str,
    images: Sequence[bytes],
) -> list[dict[str, Any]]:
    """One row per verdict; an image's row names the image by its hash, not the prompt
    (`verdicts` in `check_input`'s order)."""
    rows = []
    pictures = iter(images)
    for v in verdicts:
        row = audit_row(platform, v, user_id=user.id, prompt=prompt)
        if v.stage == "input_image":
            image = next(pictures, None)
            if image is not None:
                row["content_sha256"] = hashlib.sha256(image).hexdigest()
                row["prompt"] = None
        rows.append(row)
    return rows


def audit_row(
    platform: ApiContext,
    verdict: Verdict,
    *,
    user_id: str,
    prompt: str,
    job_id: str | None = None,
) -> dict[str, Any]:
    keep_prompt = platform.settings.safety_prompt_retention_days > 0
    return {
        **verdict.audit_columns(),
        "at": platform.clock(),
        "job_id": job_id,
        "user_id": user_id,
        "content_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "prompt": prompt if keep_prompt else None,
    }


def refusal(verdict: Verdict, *, from_video: bool = False) -> ModerationBlocked:
    """What the caller is told: the categories, never which rule or term fired.
    `from_video`: the images checked are frames of an uploaded video (edit, extension)."""
    names = ", ".join(f"{DESCRIPTIONS[c]} ({c.value})" for c in verdict.categories)
    if verdict.stage == "input_image" and from_video:
        what, param = "A frame of the uploaded video was", "video"
    elif verdict.stage == "input_image":
        what, param = "The reference image was", "input_reference"
    else:
        what, param = "The prompt was", "prompt"
    return ModerationBlocked(
        f"{what} refused by content moderation: {names}.",
        categories=tuple(c.value for c in verdict.categories),
        param=param,
    )
