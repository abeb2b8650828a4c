"""A bare FastAPI app answering like `POST /v1/videos` and `GET /v1/videos/{id}`, with no
auth, no validation and no database: the ceiling the HTTP stack allows on this machine.

Run as `python bench/_bare_app.py PORT`; uvicorn gets the same settings as `reelgen serve`
and `reelgen api` (one process, access log off, log level warning).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response

app = FastAPI()


def _video(video_id: str) -> dict[str, Any]:
    """A submit response's shape and size (see reelgen.api.schemas.VideoPublic)."""
    return {
        "id": video_id,
        "object": "video",
        "model": "reference",
        "prompt": "a small red ball bouncing",
        "status": "queued",
        "progress": 0,
        "created_at": int(time.time()),
        "completed_at": None,
        "expires_at": None,
        "seconds": "1",
        "size": "64x64",
        "remixed_from_video_id": None,
        "error": None,
        "stage": "waiting_for_gpu",
        "queue_position": 0,
        "eta_seconds": 1,
    }


@app.post("/v1/videos")
async def create(request: Request) -> dict[str, Any]:
    await request.body()
    return _video("video_0123456789abcdef0123456789abcdef")


@app.get("/v1/videos/{video_id}")
async def retrieve(video_id: str, response: Response) -> dict[str, Any]:
    response.headers["openai-poll-after-ms"] = "1000"
    return _video(video_id)


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
