"""`reelgen safety eval`: the text check's precision, recall and false-positive rate per
category on a labelled set. A prompt counts as flagged for a category when its score
reaches the category's review threshold (a review holds the job, so it is no pass)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from reelgen.safety.learned import Example
from reelgen.safety.text import TextModerator
from reelgen.safety.verdict import Action, Category

IMPLIES = {Category.SEXUAL_MINORS: frozenset({Category.SEXUAL})}
"""A label that implies others: sexual content involving minors is sexual content, so a
prompt labelled only `sexual_minors` that is also flagged `sexual` is no false positive."""


@dataclass(slots=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0


@dataclass(slots=True)
class Report:
    examples: int
    per_category: dict[Category, Counts]
    benign: int
    benign_flagged: int
    recall_by_lang: dict[tuple[Category, str], Counts]
    recall_by_kind: dict[tuple[Category, str], Counts]
    misses: list[tuple[Example, str]] = field(default_factory=list)
    """(example, what went wrong) for the first mistakes."""
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def benign_fpr(self) -> float:
        return self.benign_flagged / self.benign if self.benign else 0.0


def evaluate(moderator: TextModerator, examples: Sequence[Example], *, keep: int = 50) -> Report:
    thresholds = moderator.policy.thresholds
    enabled = moderator.policy.enabled
    per = {c: Counts() for c in Category if c in enabled}
    by_lang: dict[tuple[Category, str], Counts] = defaultdict(Counts)
    by_kind: dict[tuple[Category, str], Counts] = defaultdict(Counts)
    report = Report(len(examples), per, 0, 0, by_lang, by_kind)
    for example in examples:
        labels = example.labels.union(*(IMPLIES.get(c, frozenset()) for c in example.labels))
        started = time.perf_counter()
        verdict = moderator.check(example.text)
        report.latencies_ms.append((time.perf_counter() - started) * 1000)
        if not example.labels:
            report.benign += 1
            if verdict.action is not Action.ALLOW:
                report.benign_flagged += 1
                if len(report.misses) < keep:
                    report.misses.append((example, f"flagged {','.join(verdict.categories)}"))
        for category, counts in per.items():
            flagged = verdict.scores[category] >= thresholds[category].review
            if category in labels:
                slot = "tp" if flagged else "fn"
                for table, key in ((by_lang, example.lang), (by_kind, example.kind)):
                    c = table[(category, key)]
                    setattr(c, slot, getattr(c, slot) + 1)
                if not flagged and len(report.misses) < keep:
                    report.misses.append((example, f"missed {category}"))
            else:
                slot = "fp" if flagged else "tn"
            setattr(counts, slot, getattr(counts, slot) + 1)
    return report
