"""What the API says about its models: every public name (the adapters, and the names
`REELGEN_MODEL_NAMES` maps to them) with what each makes and takes, so a client can ask
before it submits instead of learning from a refusal."""

from __future__ import annotations

from dataclasses import dataclass

from reelgen.domain.errors import NotFound
from reelgen.domain.jobs import SIZES
from reelgen.platform import ApiContext
from reelgen.services.videos import resolve_model


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    """The public name."""
    adapter: str
    """The adapter it runs on (itself, for an adapter's own name)."""
    sizes: tuple[str, ...]
    max_seconds: int
    fps: int
    styles: tuple[str, ...]
    accepts: tuple[str, ...]
    """What it takes besides the prompt: `image`, `video` (edits), `clip` (extensions from
    the last frames)."""
    requires: tuple[str, ...]


def listed(platform: ApiContext) -> list[ModelInfo]:
    """Every public name, adapters first, each group sorted."""
    names = platform.settings.model_names
    served = sorted(platform.models)
    aliases = [n for n in sorted(names) if n not in platform.models and names[n] in platform.models]
    return [_info(platform, name, names.get(name, name)) for name in (*served, *aliases)]


def describe(platform: ApiContext, name: str) -> ModelInfo:
    adapter = resolve_model(platform.settings.model_names, name, platform.models)
    if adapter is None or adapter not in platform.models:
        raise NotFound(f"No model named {name[:128]!r}.", param="model")
    return _info(platform, name, adapter)


def _info(platform: ApiContext, name: str, adapter: str) -> ModelInfo:
    model = platform.models[adapter]
    return ModelInfo(
        id=name,
        adapter=adapter,
        sizes=tuple(s for s in SIZES if s in model.sizes),
        max_seconds=model.max_seconds,
        fps=model.fps,
        styles=tuple(sorted(model.styles)),
        accepts=tuple(sorted(c.value for c in model.accepts)),
        requires=tuple(sorted(c.value for c in model.requires)),
    )
