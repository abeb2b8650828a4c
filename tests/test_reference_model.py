"""The reference model honours the VideoModel contract: determinism, resume, cancel."""

from __future__ import annotations

import io
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reelgen.models.base import Clip, GenerationSpec, StepInfo
from reelgen.models.reference import SAMPLE_RATE, STYLES, ReferenceModel

from .cog_standin import make_mp4

STEPS = 4
PROMPT = "three red balloons rising over a city at sunset"


def make_spec(prompt: str = PROMPT, **overrides: object) -> GenerationSpec:
    fields: dict[str, object] = dict(prompt=prompt, seconds=1, width=128, height=72, seed=1)
    fields.update(overrides)
    return GenerationSpec(**fields)  # type: ignore[arg-type]


def ignore(_: StepInfo) -> None:
    pass


def render(
    spec: GenerationSpec, resume_from: bytes | None = None, steps: int = STEPS
) -> tuple[np.ndarray, np.ndarray]:
    clip = ReferenceModel(steps=steps).generate(spec, ignore, resume_from=resume_from)
    return np.stack(list(clip.frames)), clip.audio


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_clip_matches_the_contract() -> None:
    spec = make_spec(seconds=2)
    clip = ReferenceModel(steps=STEPS).generate(spec, ignore)
    assert isinstance(clip, Clip)
    assert iter(clip.frames) is clip.frames, "frames must be a lazy iterator"
    assert (clip.width, clip.height, clip.fps, clip.num_frames) == (128, 72, 24, 48)
    frames = list(clip.frames)
    assert len(frames) == 48
    assert all(f.shape == (72, 128, 3) and f.dtype == np.uint8 for f in frames)
    assert clip.sample_rate == SAMPLE_RATE
    assert clip.audio.dtype == np.float32
    assert clip.audio.shape == (2, 2 * SAMPLE_RATE)
    assert np.abs(clip.audio).max() <= 1.0
    assert clip.audio.std() > 0.01


def test_model_metadata() -> None:
    model = ReferenceModel(steps=7)
    model.load()
    assert model.name == "reference"
    assert model.num_steps(make_spec()) == 7
    small = model.estimate_seconds(make_spec())
    longer = model.estimate_seconds(make_spec(seconds=4))
    bigger = model.estimate_seconds(make_spec(width=1280, height=720))
    assert 0 < small < longer < bigger
    assert {"cinematic", "anime", "noir", "watercolor", "pixel"} == STYLES
    with pytest.raises(ValueError):
        ReferenceModel(steps=0)


def test_same_inputs_give_identical_output() -> None:
    frames_a, audio_a = render(make_spec())
    frames_b, audio_b = render(make_spec())
    assert frames_a.tobytes() == frames_b.tobytes()
    assert audio_a.tobytes() == audio_b.tobytes()


def test_seed_changes_the_output() -> None:
    frames_a, audio_a = render(make_spec(seed=1))
    frames_b, audio_b = render(make_spec(seed=2))
    assert mean_abs_diff(frames_a, frames_b) > 5
    assert not np.array_equal(audio_a, audio_b)


def test_colour_words_drive_the_palette() -> None:
    red, _ = render(make_spec("red balloons in a red sky"))
    blue, _ = render(make_spec("a blue ocean"))
    green, _ = render(make_spec("a green forest"))
    r_mean, b_mean, g_mean = (f.reshape(-1, 3).mean(axis=0) for f in (red, blue, green))
    assert r_mean[0] - r_mean[2] > 50
    assert b_mean[2] - b_mean[0] > 50
    assert g_mean[1] - max(g_mean[0], g_mean[2]) > 25


def test_different_prompts_give_clearly_different_frames() -> None:
    prompts = [
        PROMPT,
        "ocean waves at sunset",
        "a starry night over snowy mountains",
        "a cat sleeping on a sofa",
        "three balloons",
        "five balloons",
    ]
    renders = {p: render(make_spec(p)) for p in prompts}
    for a, b in combinations(prompts, 2):
        assert mean_abs_diff(renders[a][0], renders[b][0]) > 8, (a, b)
        assert not np.array_equal(renders[a][1], renders[b][1]), (a, b)


def test_styles_change_the_look() -> None:
    plain, _ = render(make_spec())
    styled = {style: render(make_spec(style=style))[0] for style in sorted(STYLES)}
    for style, frames in styled.items():
        assert mean_abs_diff(frames, plain) > 10, style
    for a, b in combinations(sorted(STYLES), 2):
        assert mean_abs_diff(styled[a], styled[b]) > 8, (a, b)

    def channel_spread(frames: np.ndarray) -> float:
        return mean_abs_diff(frames[..., 0], frames[..., 1])

    assert channel_spread(styled["noir"]) < 3 < 20 < channel_spread(plain)
    assert styled["cinematic"][:, :4].max() == 0, "cinematic is letterboxed"
    assert plain[:, :4].max() > 0
    middle = len(plain) // 2
    assert len(np.unique(styled["pixel"][middle].reshape(-1, 3), axis=0)) < 64
    assert len(np.unique(plain[middle].reshape(-1, 3), axis=0)) > 1000


def test_unknown_style_is_rejected() -> None:
    with pytest.raises(ValueError):
        ReferenceModel(steps=STEPS).generate(make_spec(style="vaporwave"), ignore)


def test_reference_image_shapes_the_opening_frames() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 120), (20, 220, 40)).save(buffer, format="PNG")
    plain, _ = render(make_spec())
    guided, _ = render(make_spec(reference_image=buffer.getvalue()))
    first_green = guided[0, :, :, 1].mean() - guided[0, :, :, [0, 2]].mean()
    plain_green = plain[0, :, :, 1].mean() - plain[0, :, :, [0, 2]].mean()
    assert first_green - plain_green > 60
    assert mean_abs_diff(guided[0], plain[0]) > mean_abs_diff(guided[-1], plain[-1])


def test_every_step_reports_progress() -> None:
    seen: list[tuple[int, int]] = []
    ReferenceModel(steps=5).generate(make_spec(), lambda info: seen.append((info.step, info.total)))
    assert seen == [(step, 5) for step in range(1, 6)]


def test_resume_from_mid_run_snapshot_is_byte_identical() -> None:
    spec = make_spec(seconds=2)
    full_frames, full_audio = render(spec)
    snapshots: dict[int, object] = {}

    def keep(info: StepInfo) -> None:
        snapshots[info.step] = info.snapshot

    ReferenceModel(steps=STEPS).generate(spec, keep)
    # Taken after the run finished, so this also checks that later steps did not mutate it.
    snapshot = snapshots[2]()  # type: ignore[operator]
    resumed_steps: list[int] = []
    clip = ReferenceModel(steps=STEPS).generate(
        spec, lambda info: resumed_steps.append(info.step), resume_from=snapshot
    )
    assert resumed_steps == [3, 4]
    assert np.stack(list(clip.frames)).tobytes() == full_frames.tobytes()
    assert clip.audio.tobytes() == full_audio.tobytes()


def test_resume_after_the_last_step_only_decodes() -> None:
    spec = make_spec()
    full_frames, _ = render(spec)
    last: list[bytes] = []
    ReferenceModel(steps=STEPS).generate(
        spec, lambda info: last.append(info.snapshot()) if info.step == STEPS else None
    )
    calls: list[StepInfo] = []
    clip = ReferenceModel(steps=STEPS).generate(spec, calls.append, resume_from=last[0])
    assert calls == []
    assert np.stack(list(clip.frames)).tobytes() == full_frames.tobytes()


def snapshot_at(spec: GenerationSpec, step: int, steps: int = STEPS) -> bytes:
    taken: list[bytes] = []

    def keep(info: StepInfo) -> None:
        if info.step == step:
            taken.append(info.snapshot())

    ReferenceModel(steps=steps).generate(spec, keep)
    return taken[0]


@pytest.mark.parametrize(
    "other",
    [
        make_spec("a different prompt"),
        make_spec(seed=99),
        make_spec(style="noir"),
        make_spec(width=64, height=64),
    ],
)
def test_snapshot_from_another_spec_is_rejected(other: GenerationSpec) -> None:
    snapshot = snapshot_at(make_spec(), 2)
    with pytest.raises(ValueError):
        ReferenceModel(steps=STEPS).generate(other, ignore, resume_from=snapshot)


def test_snapshot_from_another_step_count_or_garbage_is_rejected() -> None:
    snapshot = snapshot_at(make_spec(), 2)
    with pytest.raises(ValueError):
        ReferenceModel(steps=STEPS + 1).generate(make_spec(), ignore, resume_from=snapshot)
    with pytest.raises(ValueError):
        ReferenceModel(steps=STEPS).generate(make_spec(), ignore, resume_from=b"not a snapshot")


class Preempted(Exception):
    pass


def test_raising_from_on_step_stops_generation() -> None:
    seen: list[int] = []

    def stop_at_two(info: StepInfo) -> None:
        seen.append(info.step)
        if info.step == 2:
            raise Preempted

    with pytest.raises(Preempted):
        ReferenceModel(steps=6).generate(make_spec(), stop_at_two)
    assert seen == [1, 2]


def test_spec_reference_image_is_part_of_the_fingerprint() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
    guided = replace(make_spec(), reference_image=buffer.getvalue())
    snapshot = snapshot_at(make_spec(), 1)
    with pytest.raises(ValueError):
        ReferenceModel(steps=STEPS).generate(guided, ignore, resume_from=snapshot)


def _source_clip(tmp_path: Path, name: str = "source.mp4", frames: int = 24) -> Path:
    """A red ramp left to right whose blue rises over time (a layout and a motion)."""
    path = tmp_path / name
    path.write_bytes(make_mp4(128, 72, 24, frames, audio=False))
    return path


def _against_x(frames: np.ndarray) -> float:
    """How closely brightness follows the horizontal position (1: the source's ramp)."""
    return float(np.corrcoef(frames.mean(axis=(0, 1, 3)), np.arange(frames.shape[2]))[0, 1])


def test_an_edit_keeps_the_source_layout_and_motion_in_the_prompts_colours(
    tmp_path: Path,
) -> None:
    source = _source_clip(tmp_path)
    edited, _ = render(make_spec("a green forest at dawn", source_video=source))
    plain, _ = render(make_spec("a green forest at dawn"))
    assert edited.shape == plain.shape
    assert _against_x(edited) > 0.9 and abs(_against_x(plain)) < 0.5
    blue = edited[..., 2].mean(axis=(1, 2))
    assert blue[-1] - blue[0] > 40  # the source's blue rise survives
    assert edited[..., 1].mean() > 50  # the source has no green; the forest brings it
    assert mean_abs_diff(edited, plain) > 10


def test_an_edit_runs_the_tail_of_the_schedule(tmp_path: Path) -> None:
    spec = make_spec(source_video=_source_clip(tmp_path))
    model = ReferenceModel(steps=10)
    assert model.num_steps(spec) == 7 and model.num_steps(make_spec()) == 10
    assert model.estimate_seconds(spec) < model.estimate_seconds(make_spec())
    seen: list[tuple[int, int]] = []
    model.generate(spec, lambda info: seen.append((info.step, info.total)))
    assert seen == [(step, 7) for step in range(1, 8)]


def test_an_edit_resumed_from_its_snapshot_is_byte_identical(tmp_path: Path) -> None:
    spec = make_spec(source_video=_source_clip(tmp_path))
    full, audio = render(spec, steps=6)
    clip = ReferenceModel(steps=6).generate(spec, ignore, resume_from=snapshot_at(spec, 2, 6))
    assert np.stack(list(clip.frames)).tobytes() == full.tobytes()
    assert clip.audio.tobytes() == audio.tobytes()
    assert render(spec, steps=6)[0].tobytes() == full.tobytes()


def test_the_source_video_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    spec = make_spec(source_video=_source_clip(tmp_path))
    other = make_spec(source_video=_source_clip(tmp_path, "other.mp4", frames=12))
    snapshot = snapshot_at(spec, 1)
    for wrong in (other, make_spec()):
        with pytest.raises(ValueError):
            ReferenceModel(steps=STEPS).generate(wrong, ignore, resume_from=snapshot)
