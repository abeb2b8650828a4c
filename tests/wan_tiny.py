"""The tiny random-weight Wan pipeline of the adapter's tests, saved as a diffusers pipeline
directory, as an operator's downloaded weights would be."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def build(path: Path, task: Literal["t2v", "i2v", "i2v-clip", "ti2v"] = "t2v") -> Path:
    from reelgen.models.wan_random import random_pipeline

    random_pipeline("tiny", task=task).save_pretrained(str(path))
    return path
