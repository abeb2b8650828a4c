"""The tiny random-weight Wan pipeline of the adapter's tests, saved as a diffusers pipeline
directory, as an operator's downloaded weights would be."""

from __future__ import annotations

from pathlib import Path


def build(path: Path) -> Path:
    from reelgen.models.wan_random import random_pipeline

    random_pipeline("tiny").save_pretrained(str(path))
    return path
