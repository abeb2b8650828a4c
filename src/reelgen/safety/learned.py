"""The learned part of the text check: a linear model per category over character n-grams of
the normalised prompt, trained at start-up on the labelled set the package ships
(`data/train.jsonl`, a second or so on one core). It catches paraphrases the term lists
miss; its weights are folded into one sparse matrix, so a prompt costs one product."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from reelgen.safety.normalize import Normalized, normalize
from reelgen.safety.verdict import Category


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    labels: frozenset[Category]
    lang: str = "en"
    kind: str = ""


def read_examples(lines: Iterable[str], *, source: str) -> list[Example]:
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            labels = frozenset(Category(c) for c in row.get("labels", []))
            out.append(Example(row["text"], labels, row.get("lang", "en"), row.get("kind", "")))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{source}:{n}: not a labelled example ({e})") from e
    return out


def builtin_examples(name: str) -> list[Example]:
    path = resources.files("reelgen.safety").joinpath(f"data/{name}.jsonl")
    return read_examples(path.read_text("utf-8").splitlines(), source=f"data/{name}.jsonl")


def features(text: Normalized) -> str:
    """What the n-grams are taken from: the skeleton (evasions undone) and the plain words."""
    return f"{text.skeleton} | {' '.join(text.words)}"


class LearnedClassifier:
    def __init__(self, examples: Sequence[Example], *, c: float = 4.0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        if not examples:
            raise ValueError("the learned classifier needs training examples")
        docs = [features(normalize(e.text)) for e in examples]
        self._vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, dtype=np.float32
        )
        x = self._vectorizer.fit_transform(docs)
        self.categories = tuple(c for c in Category if any(c in e.labels for e in examples))
        weights, biases = [], []
        for category in self.categories:
            y = np.array([category in e.labels for e in examples])
            model = LogisticRegression(C=c, class_weight="balanced", solver="liblinear")
            model.fit(x, y)
            weights.append(model.coef_[0])
            biases.append(model.intercept_[0])
        self._weights = np.array(weights, dtype=np.float32).T
        self._biases = np.array(biases, dtype=np.float32)

    def scores(self, text: Normalized) -> dict[Category, float]:
        x = self._vectorizer.transform([features(text)])
        logits = np.asarray(x @ self._weights).ravel() + self._biases
        probs = 1.0 / (1.0 + np.exp(-logits))
        return {c: float(p) for c, p in zip(self.categories, probs, strict=True)}
