"""C2PA provenance: every published MP4 carries a signed manifest (a model created it, with
the model's name, no user data) that verifies as trusted against the signing CA; one
flipped byte makes it tampered. `reelgen provenance init` and `verify` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from reelgen.cli.main import app
from reelgen.media.encode import encode_clip
from reelgen.media.provenance import DIGITAL_SOURCE, ProvenanceSigner, State, make_dev_ca, verify
from reelgen.models.base import Clip
from reelgen.settings import Settings


def _clip(path: Path) -> Path:
    frames = (np.full((64, 64, 3), 10 * i, np.uint8) for i in range(24))
    audio = np.zeros((2, 48_000), np.float32)
    clip = Clip(64, 64, 24, 24, frames, audio, 48_000)
    return encode_clip(clip, path).video_path


def _flipped(path: Path, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def test_a_signed_clip_verifies_and_a_flipped_byte_does_not(tmp_path: Path) -> None:
    ca, chain, key = make_dev_ca(tmp_path / "ca")
    signer = ProvenanceSigner.from_files(chain, key, version="0.1.0")
    plain = _clip(tmp_path / "plain.mp4")
    signed = tmp_path / "signed.mp4"
    signer.sign(plain, signed, model="sora-2", model_version="reference")
    trusted = verify(signed, ca.read_bytes())
    assert trusted.state is State.TRUSTED and trusted.problems == []
    assert verify(signed).state is State.VALID  # intact, but nobody said to trust the CA
    other_ca, _, _ = make_dev_ca(tmp_path / "other")
    assert verify(signed, other_ca.read_bytes()).state is State.VALID
    assert verify(_flipped(signed, tmp_path / "t.mp4"), ca.read_bytes()).state is State.TAMPERED
    assert verify(plain).state is State.UNSIGNED
    assert trusted.manifest is not None
    (actions,) = [
        a for a in trusted.manifest["assertions"] if a["label"].startswith("c2pa.actions")
    ]
    (created,) = actions["data"]["actions"]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == DIGITAL_SOURCE
    assert created["softwareAgent"] == {"name": "sora-2", "version": "reference"}


def test_every_published_video_is_signed_and_carries_no_user_data(start_server) -> None:
    live = start_server()
    prompt = "a very particular lighthouse at dusk"
    with live.client() as http:
        video_id = http.post("/v1/videos", json={"prompt": prompt, "size": "64x64"}).json()["id"]
        assert live.wait_for(video_id)["status"] == "completed"
        content = http.get(f"/v1/videos/{video_id}/content").content
    video = live.platform.settings.data_dir / "downloaded.mp4"
    video.write_bytes(content)
    ca = live.platform.settings.data_dir / "provenance" / "ca.pem"  # the development CA
    checked = verify(video, ca.read_bytes())
    assert checked.state is State.TRUSTED, checked.problems
    text = json.dumps(checked.manifest)
    job = live.platform.jobs.get(video_id)
    assert job is not None
    assert prompt not in text and job.user_id not in text and video_id not in text


def test_the_command_line_makes_a_ca_and_verifies(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["provenance", "init", str(tmp_path / "dev")])
    assert made.exit_code == 0, made.output
    assert "REELGEN_PROVENANCE_CERT=" in made.output
    assert runner.invoke(app, ["provenance", "init", str(tmp_path / "dev")]).exit_code != 0
    signer = ProvenanceSigner.from_files(
        tmp_path / "dev" / "signer-chain.pem", tmp_path / "dev" / "signer-key.pem", version="x"
    )
    signed = tmp_path / "signed.mp4"
    signer.sign(_clip(tmp_path / "plain.mp4"), signed, model="m", model_version="v")
    trust = ["--trust", str(tmp_path / "dev" / "ca.pem")]
    ok = runner.invoke(app, ["provenance", "verify", str(signed), *trust])
    assert ok.exit_code == 0 and ok.output.startswith("trusted"), ok.output
    bad = runner.invoke(app, ["provenance", "verify", str(_flipped(signed, tmp_path / "b.mp4"))])
    assert bad.exit_code == 1 and bad.output.startswith("tampered")
    unsigned = runner.invoke(app, ["provenance", "verify", str(tmp_path / "plain.mp4")])
    assert unsigned.exit_code == 2 and unsigned.output.startswith("unsigned")


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        Settings(provenance_cert=tmp_path / "chain.pem")
