"""Trains the learned part of the text check (`safety.learned`) with scikit-learn, which
only this needs (the `train` extra): `reelgen safety train` writes the shipped weights,
and tests train small ones of their own."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from reelgen.safety.learned import NGRAMS, Example, LearnedClassifier, examples_digest, features
from reelgen.safety.normalize import normalize
from reelgen.safety.verdict import Category

C = 4.0
"""Inverse regularisation strength of each category's logistic regression."""


def train(examples: Sequence[Example], *, c: float = C) -> LearnedClassifier:
    if not examples:
        raise ValueError("the learned classifier needs training examples")
    docs = [features(normalize(e.text)) for e in examples]
    vectorizer = TfidfVectorizer(
        analyzer="char_wb", ngram_range=NGRAMS, min_df=2, sublinear_tf=True, dtype=np.float32
    )
    x = vectorizer.fit_transform(docs)
    categories = tuple(k for k in Category if any(k in e.labels for e in examples))
    weights, biases = [], []
    for category in categories:
        y = np.array([category in e.labels for e in examples])
        model = LogisticRegression(C=c, class_weight="balanced", solver="liblinear", random_state=0)
        model.fit(x, y)
        weights.append(model.coef_[0])
        biases.append(model.intercept_[0])
    vocabulary = vectorizer.get_feature_names_out().tolist()
    return LearnedClassifier(
        vocabulary,
        vectorizer.idf_,
        np.array(weights, dtype=np.float32).T,
        np.array(biases, dtype=np.float32),
        categories,
        ngram_range=NGRAMS,
        trained_on=examples_digest(examples),
    )
