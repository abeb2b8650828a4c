"""The object key layout, in one place. Keys are by job, attempt and variant; no bytes live in
the database, only these keys.

    inputs/{job}/reference                   the validated reference image
    checkpoints/{job}/a{attempt}-step{step}  model state at a step boundary
    videos/{job}/a{attempt}/{variant file}   outputs, per attempt so a stale one cannot
                                             overwrite the attempt that replaced it
    quarantine/{job}/a{attempt}/video.mp4    an output that moderation blocked: kept for the
                                             audit, never served, signed or listed
"""

from __future__ import annotations

from reelgen.domain.jobs import Variant

OUTPUT_FILES = {
    Variant.VIDEO: "video.mp4",
    Variant.THUMBNAIL: "thumbnail.webp",
    Variant.SPRITESHEET: "spritesheet.jpg",
}
FILE_VARIANTS = {name: variant for variant, name in OUTPUT_FILES.items()}


def reference(job_id: str) -> str:
    return f"inputs/{job_id}/reference"


def source_video(job_id: str) -> str:
    """An uploaded video that the job continues or edits."""
    return f"inputs/{job_id}/source.mp4"


def inputs_prefix(job_id: str) -> str:
    return f"inputs/{job_id}/"


def checkpoint(job_id: str, attempt: int, step: int) -> str:
    return f"checkpoints/{job_id}/a{attempt}-step{step:05d}"


def checkpoints_prefix(job_id: str) -> str:
    return f"checkpoints/{job_id}/"


def outputs_prefix(job_id: str, attempt: int) -> str:
    return f"videos/{job_id}/a{attempt}/"


def output(job_id: str, attempt: int, variant: Variant) -> str:
    return outputs_prefix(job_id, attempt) + OUTPUT_FILES[variant]


def videos_prefix(job_id: str) -> str:
    return f"videos/{job_id}/"


def expiring(
    job_id: str, outputs: tuple[str | None, ...], reference_key: str | None, uploaded: bool
) -> list[str]:
    """What an expired video leaves to delete: its outputs (the row's keys) and its inputs
    (its reference image; the clip uploaded to extend or edit). Its checkpoints went when it
    completed."""
    found = [k for k in (*outputs, reference_key) if k is not None]
    return [*found, source_video(job_id)] if uploaded else found


def job_prefixes(job_id: str) -> tuple[str, ...]:
    """Everything stored for a job, for `DELETE /v1/videos/{id}` (expiry deletes known keys:
    `expiring`)."""
    return (videos_prefix(job_id), inputs_prefix(job_id), checkpoints_prefix(job_id))


QUARANTINE = "quarantine/"


def quarantine(job_id: str, attempt: int) -> str:
    return f"{QUARANTINE}{job_id}/a{attempt}/video.mp4"


def quarantined(key: str) -> bool:
    return key.startswith(QUARANTINE)


def variant_of(key: str) -> Variant | None:
    """The output variant a key holds, or None when it is no output."""
    if not key.startswith("videos/"):
        return None
    return FILE_VARIANTS.get(key.rsplit("/", 1)[-1])
