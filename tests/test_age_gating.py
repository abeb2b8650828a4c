"""Age gating: an adult category a deployment allows (`REELGEN_SAFETY_BLOCK_SEXUAL=false`)
applies only to keys whose users are verified adults (`reelgen keys create --age-verified`),
at the prompt check and again at the output check of the job's clip; everyone else is
blocked as if the deployment blocked it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reelgen.domain.jobs import Tier
from reelgen.platform import build_moderator, safety_policy
from reelgen.safety.classifiers import Content
from reelgen.safety.output import OutputModerator
from reelgen.safety.verdict import Action, Category
from reelgen.services.accounts import create_key

from .conftest import make_settings

PROMPT = "an explicit sex scene between two adults in a hotel room"


def test_adult_prompts_pass_only_for_verified_adults_where_the_deployment_allows_them(
    start_server,
) -> None:
    live = start_server(workers=0, safety_block_sexual=False)
    adult = create_key(live.platform, user_name="carol", tier=Tier.PAID, age_verified=True)
    body = {"prompt": PROMPT, "seconds": "1", "size": "64x64"}
    with live.client(adult) as http:
        accepted = http.post("/v1/videos", json=body)
    assert accepted.status_code == 200, accepted.text
    job = live.platform.jobs.get(accepted.json()["id"])
    assert job is not None and job.age_verified  # the output check will know
    with live.client() as http:  # a paid key, not verified
        refused = http.post("/v1/videos", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "moderation_blocked"
    assert "sexual" in refused.json()["error"]["message"]
    strict = start_server(workers=0)  # the default deployment blocks it for everyone
    verified = create_key(strict.platform, user_name="dan", tier=Tier.PAID, age_verified=True)
    with strict.client(verified) as http:
        assert http.post("/v1/videos", json=body).status_code == 400


class _Nudity:
    """An output check that finds adult nudity in every clip."""

    name = "nudity_everywhere"
    nudity = True

    def check(self, content: Content) -> tuple[dict[Category, float], dict[str, Any]]:
        return {Category.SEXUAL: 0.9}, {}


def test_the_output_check_applies_the_same_gate(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, safety_block_sexual=False)
    moderator = OutputModerator(safety_policy(settings), build_moderator(settings), [_Nudity()])
    frames, audio = [np.zeros((32, 32, 3), np.uint8)], np.zeros((1, 24_000))
    unverified = moderator.check(frames, audio, 24_000, prompt="a beach")
    assert unverified.action is Action.BLOCK and unverified.categories == (Category.SEXUAL,)
    assert (
        moderator.check(frames, audio, 24_000, prompt="a beach", adult=True).action is Action.ALLOW
    )
    minor = moderator.check(frames, audio, 24_000, prompt="a 12 year old girl", adult=True)
    assert minor.action is Action.BLOCK and Category.SEXUAL_MINORS in minor.categories


def test_a_workers_output_check_uses_the_jobs_age_verification(start_server) -> None:
    """Every clip shows adult nudity (the output check says so): a verified adult's job
    completes, anyone else's is blocked at the output."""
    live = start_server(safety_block_sexual=False, output_checks=[_Nudity()])
    adult = create_key(live.platform, user_name="erin", tier=Tier.PAID, age_verified=True)
    body = {"prompt": "a beach at dusk", "seconds": "1", "size": "64x64", "seed": 7}
    done = {}
    for name, key in (("adult", adult), ("unverified", live.paid_key)):
        with live.client(key) as http:
            video_id = http.post("/v1/videos", json=body).json()["id"]
        done[name] = live.wait_for(video_id, key=key)
    assert done["adult"]["status"] == "completed", done["adult"]
    assert done["unverified"]["status"] == "failed"
    assert done["unverified"]["error"]["code"] == "moderation_blocked"
