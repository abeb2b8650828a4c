"""The prompt check: normalise, match the term lists and the people, score the rules and
the learned classifier, and decide against the deployment's thresholds."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reelgen.safety.classifiers import Classifier, Content, merge
from reelgen.safety.learned import LearnedClassifier
from reelgen.safety.lexicon import Lexicon, load_lists
from reelgen.safety.normalize import normalize
from reelgen.safety.people import PersonFinder, load_first_names, load_gazetteer
from reelgen.safety.rules import Context, score
from reelgen.safety.verdict import ADULT, MANDATORY, Category, Thresholds, Verdict, decide

POLICY = "text-1"
"""Bumped when the rules' logic changes; the data's hash is appended to it."""
LEARNED_CUT = 0.7
"""Below this the classifier's score counts for nothing: alone it may only act when it is
sure. By 5-fold cross-validation on the training set (2,454 prompts), alone at 0.7 it flags
2.4 % of the allowed prompts and 65 % of the others (0.6: 3.8 % and 77 %; 0.8: 0.8 % and
50 %); the rules carry the rest, and their scores decide reviews."""
STYLIZED_STYLES = frozenset({"anime", "cartoon", "watercolor", "sketch", "pixel", "clay", "comic"})


@dataclass(frozen=True, slots=True)
class SafetyPolicy:
    """What a deployment chose: the optional categories it blocks and its thresholds."""

    enabled: frozenset[Category] = frozenset(Category)
    thresholds: Mapping[Category, Thresholds] = field(
        default_factory=lambda: dict.fromkeys(Category, Thresholds())
    )

    def enabled_for(self, adult: bool) -> frozenset[Category]:
        """The categories checked for a user: an adult category the deployment allows
        (`ADULT`) stays checked for anyone not verified as an adult."""
        return self.enabled if adult else self.enabled | ADULT

    def __post_init__(self) -> None:
        missing = [c.value for c in MANDATORY if c not in self.enabled]
        if missing:
            raise ValueError(f"categories {', '.join(missing)} are mandatory and stay enabled")
        if Category.SEXUAL_MINORS in self.thresholds:
            t = self.thresholds[Category.SEXUAL_MINORS]
            if t.block > Thresholds().block:
                raise ValueError("sexual_minors cannot be made more lenient than the default")

    def key(self) -> str:
        return json.dumps(
            {
                "enabled": sorted(c.value for c in self.enabled),
                "thresholds": {c.value: [t.block, t.review] for c, t in self.thresholds.items()},
            },
            sort_keys=True,
        )


class TextModerator:
    def __init__(
        self,
        policy: SafetyPolicy,
        *,
        lexicon: Mapping[str, Sequence[str]] | None = None,
        gazetteer: Sequence[list[str]] | None = None,
        model: LearnedClassifier | None = None,
        learned: bool = True,
    ):
        """`model`: the learned classifier (default: the shipped weights); `learned=False`:
        the rules only (a worker reads a prompt only for who and what it names, which the
        rules find)."""
        self.policy = policy
        self.classifiers: tuple[Classifier, ...] = ()
        """A deployment's own classifiers (`with_classifiers`), asked after the rules."""
        lists = dict(lexicon) if lexicon is not None else load_lists()
        people = list(gazetteer) if gazetteer is not None else load_gazetteer()
        self._lexicon = Lexicon(lists)
        self._people = PersonFinder(
            people,
            lists.get("personal_reference", ()),
            load_first_names(),
            lists.get("photo_reference", ()),
        )
        self._classifier = (model or LearnedClassifier.shipped()) if learned else None
        digest = hashlib.sha256()
        digest.update(json.dumps(lists, sort_keys=True).encode())
        digest.update(json.dumps(people).encode())
        if self._classifier is not None:
            digest.update(self._classifier.trained_on.encode())
        digest.update(policy.key().encode())
        self.version = f"{POLICY}+{digest.hexdigest()[:12]}" + ("" if learned else "+rules")

    def with_classifiers(self, classifiers: Sequence[Classifier]) -> TextModerator:
        """This check (sharing its trained model) that also asks `classifiers`."""
        if not classifiers:
            return self
        other = copy.copy(self)
        other.classifiers = (*self.classifiers, *classifiers)
        other.version = f"{self.version}+{'+'.join(c.name for c in classifiers)}"
        return other

    def check(
        self,
        prompt: str,
        *,
        style: str | None = None,
        consent: bool = False,
        reference_face: bool = False,
        adult: bool = False,
    ) -> Verdict:
        text = normalize(prompt)
        found = self._lexicon.match(text)
        people = self._people.find(prompt, text)
        ctx = Context(
            stylized=style in STYLIZED_STYLES, consent=consent, reference_face=reference_face
        )
        rules, details = score(found, people, text.plain, ctx)
        raw = self._classifier.scores(text) if self._classifier is not None else {}
        learned = {c: p if p >= LEARNED_CUT else 0.0 for c, p in raw.items()}
        if not (people.any or found.has("person_role")):
            # Likeness needs someone to be like: without any sign of a person the learned
            # score (which leans on words like "realistic") counts for nothing.
            learned[Category.REAL_PERSON] = 0.0
        scores = {c: max(rules[c], learned.get(c, 0.0)) for c in Category}
        if details.get("minor"):
            # The learned sexual score counts for minors too when the prompt names a minor:
            # the same co-occurrence the rules use, with the classifier's reading of the rest.
            scores[Category.SEXUAL_MINORS] = max(
                scores[Category.SEXUAL_MINORS], learned.get(Category.SEXUAL, 0.0)
            )
        details["rules"] = {c.value: s for c, s in rules.items() if s}
        details["learned"] = {c.value: round(s, 4) for c, s in raw.items()}
        if self.classifiers:
            merge(scores, details, self.classifiers, Content(text=prompt))
        return decide(
            scores,
            self.policy.thresholds,
            self.policy.enabled_for(adult),
            self.version,
            stage="input_text",
            details=details,
        )
