"""`/v1/models`: the OpenAI Models API shape (the official SDK's `models.list` and
`models.retrieve`), with what each model makes and takes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from reelgen.api.deps import ApiDep, CurrentUser
from reelgen.api.schemas import error_responses
from reelgen.services import models
from reelgen.services.models import ModelInfo

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    """Not tracked (the field is the OpenAI shape's)."""
    owned_by: str = "reelgen"
    adapter: str
    sizes: list[str]
    max_seconds: int
    fps: int
    styles: list[str]
    accepts: list[str]
    requires: list[str]

    @classmethod
    def of(cls, info: ModelInfo) -> ModelPublic:
        return cls(
            id=info.id,
            adapter=info.adapter,
            sizes=list(info.sizes),
            max_seconds=info.max_seconds,
            fps=info.fps,
            styles=list(info.styles),
            accepts=list(info.accepts),
            requires=list(info.requires),
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


@router.get("", response_model=ModelList, responses=error_responses(401))
async def list_models(platform: ApiDep, _user: CurrentUser) -> ModelList:
    """Every public model name, with the sizes, length, styles and inputs it takes."""
    return ModelList(data=[ModelPublic.of(info) for info in models.listed(platform)])


@router.get("/{model}", response_model=ModelPublic, responses=error_responses(401, 404))
async def retrieve_model(model: str, platform: ApiDep, _user: CurrentUser) -> ModelPublic:
    """One model by its public name (a dated `NAME-YYYY-MM-DD` falls back to NAME)."""
    return ModelPublic.of(models.describe(platform, model))
