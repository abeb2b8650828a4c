"""The cost model against the shipped H200 measurements."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from reelgen.scheduler.cost import CostModel, fit, latent_tokens, measured_models, speedup


def _rows() -> list[dict]:
    text = resources.files("reelgen.scheduler").joinpath("measurements", "gpu_cost_h200.jsonl")
    return [json.loads(line) for line in text.read_text().splitlines() if line.strip()]


def test_tokens_follow_the_vae_and_patch_compression() -> None:
    for row in _rows():
        if row["kind"] == "dit_forward":
            assert latent_tokens(row["w"], row["h"], row["frames"]) == row["tokens_per_clip"]


def test_the_fit_reproduces_every_measured_forward_within_five_percent() -> None:
    models = measured_models()
    assert set(models) == {"1.3B", "14B"}
    for row in _rows():
        if row["kind"] != "dit_forward":
            continue
        predicted = models[row["model"]].forward_s(row["tokens_per_clip"], row["batch"])
        assert predicted == pytest.approx(row["sec_per_forward"], rel=0.05), row


def test_decode_and_whole_clip_seconds_match_the_measured_clips() -> None:
    models = measured_models()
    for row in _rows():
        if row["kind"] == "vae_decode":
            decode = models["1.3B"].decode_s_per_pixel_frame * row["h"] * row["w"] * row["frames"]
            assert decode == pytest.approx(row["sec"], rel=0.05)
    # 100 forwards (50 steps with guidance) plus the decode.
    assert models["14B"].gpu_seconds(1280, 720, 81) == pytest.approx(1209.7 + 4.2, rel=0.05)
    assert models["1.3B"].gpu_seconds(832, 480, 81) == pytest.approx(59.8 + 1.8, rel=0.05)


def test_sizes_that_were_never_measured_cost_in_between() -> None:
    small = measured_models()["1.3B"]
    seconds = [small.gpu_seconds(w, h, 81) for w, h in ((448, 256), (832, 480), (1280, 720))]
    assert seconds == sorted(seconds)
    assert small.gpu_seconds(832, 480, 161) > 2 * small.gpu_seconds(832, 480, 81)  # attention


def test_batching_pays_for_previews_and_not_for_full_size_clips() -> None:
    small = measured_models()["1.3B"]
    assert small.batch_gain(448, 256, 17, 4) == pytest.approx(0.0292 / 0.0208, rel=0.1)
    assert small.batch_gain(448, 256, 17, 4) > 1.15
    assert small.batch_gain(832, 480, 81, 2) < 1.02


def test_multi_gpu_runs_are_faster_and_cost_more_gpu_seconds() -> None:
    big = measured_models()["14B"]
    assert speedup(big, 8) == pytest.approx(1838 / 288, rel=0.02)
    one = big.gpu_seconds(1280, 720, 81)
    assert big.gpu_seconds(1280, 720, 81, gpus=8) > one
    assert big.wall_seconds(1280, 720, 81, gpus=8) == pytest.approx(one / speedup(big, 8))


def test_switch_costs_come_from_the_measurements() -> None:
    models = measured_models()
    assert (models["14B"].load_s, models["14B"].load_cold_s) == (0.52, 21.24)
    assert models["1.3B"].load_s == 0.05


def test_a_fit_never_has_negative_coefficients() -> None:
    rows = [
        {"batch": 1, "tokens_per_clip": 1000, "sec_per_forward": 1.0},
        {"batch": 2, "tokens_per_clip": 1000, "sec_per_forward": 1.9},
    ]
    model = fit(rows, [{"h": 1, "w": 1, "frames": 1, "sec": 1.0}])
    assert isinstance(model, CostModel)
    assert min(model.fixed_s, model.linear_s, model.quadratic_s) >= 0.0
    with pytest.raises(ValueError):
        fit([], [])
