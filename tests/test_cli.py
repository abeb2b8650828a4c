"""The `reelgen` command line: keys, migrations and the generate client."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from reelgen.cli.main import app
from reelgen.media.encode import probe_video

runner = CliRunner()


def test_keys_create_and_db_upgrade(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    from reelgen.store.database import head_revision

    assert f"revision {head_revision()}" in result.output
    result = runner.invoke(
        app, ["keys", "create", "--user", "carol", "--tier", "paid", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("rg_")
    bad = runner.invoke(app, ["keys", "create", "--user", "x", "--tier", "gold"])
    assert bad.exit_code != 0
    batch = runner.invoke(
        app, ["keys", "create", "--user", "x", "--tier", "batch", "--data-dir", str(tmp_path)]
    )
    assert batch.exit_code != 0 and "not a user's" in batch.output


def test_keys_create_without_tier_leaves_the_tier_alone(tmp_path: Path) -> None:
    args = ["keys", "create", "--user", "erin", "--data-dir", str(tmp_path)]
    assert runner.invoke(app, [*args, "--tier", "paid"]).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0
    from reelgen.platform import build_api
    from reelgen.settings import Settings

    platform = build_api(Settings(data_dir=tmp_path))
    try:
        user = platform.accounts.get_or_create_user(user_id="u", name="erin", tier=None, now=0.0)
        assert user.tier.value == "paid"
    finally:
        platform.close()


def test_keys_create_no_batch_makes_a_key_that_may_not_ask_for_batch(tmp_path: Path) -> None:
    from reelgen.platform import build_api
    from reelgen.services.accounts import authenticate
    from reelgen.settings import Settings

    args = ["keys", "create", "--user", "fay", "--data-dir", str(tmp_path)]
    plain = runner.invoke(app, args).output.strip()
    no_batch = runner.invoke(app, [*args, "--no-batch"]).output.strip()
    platform = build_api(Settings(data_dir=tmp_path))
    try:
        assert authenticate(platform, plain).allow_batch
        assert not authenticate(platform, no_batch).allow_batch
    finally:
        platform.close()


def test_generate_writes_a_playable_mp4(live, tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    result = runner.invoke(
        app,
        [
            "generate",
            "a spinning gold star",
            "--seconds",
            "1",
            "--size",
            "128x72",
            "--out",
            str(out),
            "--url",
            live.url,
            "--api-key",
            live.paid_key,
        ],
    )
    assert result.exit_code == 0, result.output
    info = probe_video(out)
    assert (info.width, info.height, info.num_frames) == (128, 72, 24)


def test_generate_reports_server_errors(live, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["generate", "x", "--size", "5x5", "--url", live.url, "--api-key", live.paid_key],
    )
    assert result.exit_code == 1
    assert "Unsupported size" in result.output
