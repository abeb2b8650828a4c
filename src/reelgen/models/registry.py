"""Which model names this installation serves and how to build each adapter: the built-in
reference model, and the remote models of `REELGEN_REMOTE_MODELS` (inference services that
speak Cog's HTTP API)."""

from __future__ import annotations

from reelgen.models.base import VideoModel
from reelgen.settings import Settings

BUILT_IN = ("reference",)


def available(settings: Settings) -> tuple[str, ...]:
    return (*BUILT_IN, *sorted(settings.remote_models))


def build_model(name: str, settings: Settings) -> VideoModel:
    if name == "reference":
        from reelgen.models.reference import ReferenceModel

        return ReferenceModel(steps=settings.reference_steps)
    remote = settings.remote_models.get(name)
    if remote is not None:
        from reelgen.models.cog import DEFAULT_INPUTS, CogConfig, CogModel

        return CogModel(
            name,
            CogConfig(
                url=remote.url.rstrip("/"),
                steps=remote.steps,
                seconds_per_step=remote.seconds_per_step,
                inputs=remote.inputs if remote.inputs is not None else dict(DEFAULT_INPUTS),
                extra_input=remote.extra_input,
                poll_interval_s=remote.poll_interval_s,
                timeout_s=remote.timeout_s,
                webhook_listen=remote.webhook_listen,
                webhook_url=remote.webhook_url,
                styles=frozenset(remote.styles),
            ),
        )
    raise ValueError(f"Unknown model {name!r}; available: {', '.join(available(settings))}")
