"""The learned part of the text check: a linear model per category over character n-grams of
the normalised prompt, trained on the labelled set the package ships (`data/train.jsonl`).
It catches paraphrases the term lists miss. The trained weights ship beside that set
(`data/learned.npz`), so a process loads them instead of training, and needs no
scikit-learn: a prompt costs a dictionary lookup per n-gram and one small product."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import IO

import numpy as np

from reelgen.safety.normalize import Normalized
from reelgen.safety.verdict import Category

SHIPPED = "data/learned.npz"
NGRAMS = (2, 5)


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
    """Inference only, in numpy: the analyzer of scikit-learn's `TfidfVectorizer(analyzer=
    "char_wb", sublinear_tf=True)` (n-grams of each space-padded word, `1 + log(count)`
    times idf, L2-normalised), then one logistic regression per category. Training
    (`safety.training`, scikit-learn, the `train` extra) happens when the shipped set
    changes, not in every process: the weights ship as `data/learned.npz`."""

    def __init__(
        self,
        vocabulary: Sequence[str],
        idf: np.ndarray,
        weights: np.ndarray,
        biases: np.ndarray,
        categories: Sequence[Category],
        *,
        ngram_range: tuple[int, int] = NGRAMS,
        trained_on: str = "",
    ):
        self._index = {gram: i for i, gram in enumerate(vocabulary)}
        self._idf = np.asarray(idf, dtype=np.float32)
        self._weights = np.asarray(weights, dtype=np.float32)
        """(features, categories)"""
        self._biases = np.asarray(biases, dtype=np.float32)
        self.categories = tuple(categories)
        self.ngram_range = ngram_range
        self.trained_on = trained_on
        """sha256 of the examples it was trained on (`examples_digest`)."""

    @classmethod
    def shipped(cls) -> LearnedClassifier:
        """The weights trained on `data/train.jsonl` (`reelgen safety train` remakes them)."""
        with resources.files("reelgen.safety").joinpath(SHIPPED).open("rb") as f:
            return cls.load(f)

    @classmethod
    def load(cls, f: IO[bytes]) -> LearnedClassifier:
        with np.load(f, allow_pickle=False) as data:
            low, high = (int(n) for n in data["ngram_range"])
            return cls(
                [str(g) for g in data["vocabulary"].tolist()],
                data["idf"],
                data["weights"],
                data["biases"],
                [Category(str(c)) for c in data["categories"].tolist()],
                ngram_range=(low, high),
                trained_on=str(data["trained_on"]),
            )

    def save(self, f: IO[bytes]) -> None:
        vocabulary = sorted(self._index, key=self._index.__getitem__)
        np.savez_compressed(
            f,
            vocabulary=np.array(vocabulary),
            idf=self._idf,
            weights=self._weights,
            biases=self._biases,
            categories=np.array([c.value for c in self.categories]),
            ngram_range=np.array(self.ngram_range),
            trained_on=np.array(self.trained_on),
        )

    def vector(self, text: Normalized) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, tf-idf values) of the prompt's n-grams in the vocabulary."""
        counts: dict[int, int] = {}
        index = self._index
        for gram in char_wb_ngrams(features(text), self.ngram_range):
            i = index.get(gram)
            if i is not None:
                counts[i] = counts.get(i, 0) + 1
        if not counts:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
        columns = np.fromiter(counts, dtype=np.intp, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        values = (1.0 + np.log(tf)) * self._idf[columns]
        return columns, values / np.linalg.norm(values)

    def scores(self, text: Normalized) -> dict[Category, float]:
        columns, values = self.vector(text)
        logits = values @ self._weights[columns] + self._biases
        probs = 1.0 / (1.0 + np.exp(-logits))
        return {c: float(p) for c, p in zip(self.categories, probs, strict=True)}


def char_wb_ngrams(doc: str, ngram_range: tuple[int, int]) -> list[str]:
    """scikit-learn's `char_wb` analyzer (lower-cased): the n-grams of each word padded
    with a space on either side; a word shorter than n gives itself once."""
    low, high = ngram_range
    out: list[str] = []
    for word in doc.lower().split():
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if size <= n:
                out.append(padded)
                break
            out.extend(padded[k : k + n] for k in range(size - n + 1))
    return out


def examples_digest(examples: Iterable[Example]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(f"{e.text}\t{sorted(c.value for c in e.labels)}\n".encode())
    return digest.hexdigest()
