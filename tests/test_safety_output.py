"""Output moderation: frame sampling, the image checks on real images (a real photograph
with a face, offline NudeNet), the hash blocklist, audio analysis and the transcriber hook,
and through a live server: a blocked clip fails with `moderation_blocked`, its bytes sit in
quarantine that no URL reaches, and housekeeping deletes them after the retention."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from reelgen.fleet import NoNudityCheck, refuse_without_nudity_check
from reelgen.platform import build_moderator, build_output_moderator, safety_policy
from reelgen.safety.classifiers import Content
from reelgen.safety.output import (
    FrameSampler,
    HaarFaces,
    HashBlocklist,
    OutputModerator,
    analyse_audio,
    nudity_available,
)
from reelgen.safety.verdict import Action, Category
from reelgen.storage import keys

from .conftest import make_settings


def _portrait() -> np.ndarray:
    """A real photograph of a face (Grace Hopper, shipped with matplotlib)."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def _gradient(h: int = 360, w: int = 640, shift: int = 0) -> np.ndarray:
    x = (np.arange(w)[None, :] + shift) % 256
    return np.repeat(np.broadcast_to(x, (h, w))[:, :, None], 3, axis=2).astype(np.uint8)


def test_sampler_takes_one_frame_a_second_and_every_cut() -> None:
    sampler = FrameSampler(fps=24)
    frames = [_gradient() for _ in range(36)] + [255 - _gradient() for _ in range(60)]
    passed = list(sampler.tee(iter(frames)))
    assert len(passed) == 96  # everything still reaches the encoder
    assert sampler.cuts == 1
    assert len(sampler.samples) == 5  # seconds 0, 1, 2, 3 and the cut at frame 36
    assert max(sampler.samples[0].shape[:2]) <= 360


def test_faces_found_in_a_photograph_and_not_in_a_gradient() -> None:
    faces = HaarFaces()
    assert faces.faces(_portrait()) >= 1
    assert faces.faces(_gradient()) == 0


@pytest.mark.skipif(not nudity_available(), reason="the nudity extra is not installed")
def test_nudenet_runs_offline_and_finds_no_nudity_in_a_portrait() -> None:
    from reelgen.safety.output import NudeNetNudity

    scores, seen = NudeNetNudity().check(Content(frames=[_portrait()]))
    assert scores[Category.SEXUAL] < 0.45 and seen["nudity"] == []


def test_hash_blocklist(tmp_path: Path) -> None:
    frame = _portrait()
    blocklist = HashBlocklist([])
    listed = tmp_path / "blocklist.txt"
    listed.write_text(f"# known images\n{blocklist.hash(frame)} violence_graphic\n")
    checks = HashBlocklist.from_file(listed)
    assert checks.check(Content(frames=[frame[::2, ::2]]))[0] == {Category.VIOLENCE_GRAPHIC: 1.0}
    assert checks.check(Content(frames=[_gradient()]))[0] == {}
    bad = tmp_path / "bad.txt"
    bad.write_text("abcdef0123456789 nudity\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1"):
        HashBlocklist.from_file(bad)


def _speechlike(seconds: float = 2.0, sr: int = 24_000) -> np.ndarray:
    """Band-limited noise at a syllable rhythm: voice-band energy spread over frequencies."""
    t = np.arange(int(sr * seconds)) / sr
    spectrum = np.fft.rfft(np.random.default_rng(0).standard_normal(t.size))
    freqs = np.fft.rfftfreq(t.size, 1 / sr)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    band = np.fft.irfft(spectrum, t.size)
    return (band / np.abs(band).max() * 0.3 * 0.5 * (1 + np.sin(2 * np.pi * 4 * t)))[None]


def test_audio_loudness_and_speech() -> None:
    sr = 24_000
    t = np.arange(sr * 2) / sr
    tone = analyse_audio((0.5 * np.sin(2 * np.pi * 440 * t))[None], sr)
    assert tone.loudness_dbfs == pytest.approx(-9.03, abs=0.05)
    assert not tone.has_speech
    assert analyse_audio(np.zeros((2, sr)), sr).loudness_dbfs == -np.inf
    assert analyse_audio(_speechlike(), sr).has_speech


def test_transcript_goes_through_the_prompt_check(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    heard: list[int] = []

    def transcribe(audio: np.ndarray, sample_rate: int) -> str:
        heard.append(sample_rate)
        return "a man is decapitated, gore everywhere"

    moderator = OutputModerator(
        safety_policy(settings), build_moderator(settings), [], transcriber=transcribe
    )
    silent = moderator.check([_gradient()], np.zeros((1, 24_000)), 24_000, prompt="a forest")
    assert silent.action is Action.ALLOW and heard == []  # no speech: nothing transcribed
    spoken = moderator.check([_gradient()], _speechlike(), 24_000, prompt="a forest")
    assert spoken.action is Action.BLOCK and Category.VIOLENCE_GRAPHIC in spoken.categories
    assert heard == [24_000]


def test_a_face_in_the_clip_of_a_prompt_about_a_real_person_is_a_likeness(tmp_path) -> None:
    settings = make_settings(tmp_path)
    moderator = OutputModerator(safety_policy(settings), build_moderator(settings), [HaarFaces()])
    audio = np.zeros((1, 24_000))
    named = moderator.check([_portrait()], audio, 24_000, prompt="a cartoon of Angela Merkel")
    assert named.action is Action.BLOCK and named.categories == (Category.REAL_PERSON,)
    anyone = moderator.check([_portrait()], audio, 24_000, prompt="an old woman smiling")
    assert anyone.action is Action.ALLOW


def test_fleet_worker_refuses_to_start_without_a_nudity_classifier(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, safety_nudity_classifier=False)
    checks = build_output_moderator(settings)
    assert not checks.has_nudity_check
    with pytest.raises(NoNudityCheck, match="REELGEN_SAFETY_ALLOW_NO_NUDITY_CLASSIFIER"):
        refuse_without_nudity_check(settings, checks)
    allowed = make_settings(
        tmp_path, safety_nudity_classifier=False, safety_allow_no_nudity_classifier=True
    )
    refuse_without_nudity_check(allowed, checks)
    if nudity_available():
        with_nudity = make_settings(tmp_path)
        refuse_without_nudity_check(with_nudity, build_output_moderator(with_nudity))


class _BlockEverything:
    """An image check (the pluggable interface) that blocks every clip as gore."""

    name = "block_everything"
    nudity = False

    def check(self, content: Content) -> tuple[dict[Category, float], dict[str, Any]]:
        return {Category.VIOLENCE_GRAPHIC: 1.0}, {"blocked_frames": len(content.frames)}


def test_blocked_output_is_quarantined_and_never_viewable(start_server) -> None:
    from reelgen.controller import loop

    live = start_server(output_checks=[_BlockEverything()])
    with live.client() as http:
        r = http.post(
            "/v1/videos", json={"prompt": "a quiet lake", "seconds": "1", "size": "64x64"}
        )
        video = live.wait_for(r.json()["id"])
        assert video["status"] == "failed"
        assert video["error"]["code"] == "moderation_blocked"
        assert "violence_graphic" in video["error"]["message"]
        for variant in ("video", "thumbnail", "spritesheet"):
            got = http.get(f"/v1/videos/{video['id']}/content", params={"variant": variant})
            assert got.status_code == 400 and "failed" in got.text, got.text
    objects = live.platform.objects
    key = keys.quarantine(video["id"], 1)
    assert objects.exists(key)
    assert not objects.exists(keys.output(video["id"], 1, keys.Variant.VIDEO))
    with pytest.raises(ValueError, match="quarantined"):
        objects.url_for(key, 2**31)
    from reelgen.storage.signing import sign_path

    forged = sign_path(live.platform.signing_secret, key, 2**31)  # even with a signature
    with live.client() as http:
        assert http.get(forged).status_code == 403
    [entry] = [e for e in live.platform.audit.for_job(video["id"]) if e["stage"] == "output"]
    assert entry["action"] == "block" and entry["quarantine_key"] == key
    assert json.loads(entry["details"])["blocked_frames"] >= 1

    later = live.platform.clock() + 31 * 86_400
    live.platform.clock = lambda: later  # type: ignore[method-assign]
    loop.tick(live.platform, reap=False)
    assert not objects.exists(key)
    [entry] = [e for e in live.platform.audit.for_job(video["id"]) if e["stage"] == "output"]
    assert entry["quarantine_key"] is None


def test_allowed_output_is_audited(live) -> None:
    with live.client() as http:
        r = http.post(
            "/v1/videos", json={"prompt": "a quiet lake", "seconds": "1", "size": "64x64"}
        )
        assert live.wait_for(r.json()["id"])["status"] == "completed"
    [entry] = [e for e in live.platform.audit.for_job(r.json()["id"]) if e["stage"] == "output"]
    assert entry["action"] == "allow" and entry["quarantine_key"] is None
    assert json.loads(entry["details"])["frames"] >= 1
