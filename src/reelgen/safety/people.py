"""Who a prompt is about: named public figures (a gazetteer shipped as data), person-name
patterns (a known first name followed by a capitalised word), and references to a private
person or to the uploaded face ("my coworker", "the woman in the photo"). What the person
is shown doing is judged by the rules (`safety.rules`), not here."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from reelgen.safety.normalize import Normalized, phrase_at, plain, term_skeleton

_NAME = re.compile(r"\b([A-ZÀ-Ý][a-zà-ÿ]+)(?:\s+(?:[A-ZÀ-Ý]\.|de|da|do|dos|van|von|del|la|le))*"
                   r"\s+([A-ZÀ-Ý][a-zà-ÿ]+)\b")  # fmt: skip


@dataclass(frozen=True, slots=True)
class People:
    public: tuple[str, ...]
    """Public figures named (canonical names)."""
    named: tuple[str, ...]
    """Other person-like names ("Sarah Jones")."""
    personal: tuple[str, ...]
    """References to a private person or the uploaded face."""
    photo: tuple[str, ...] = ()
    """References to a photo ("this pic", "cette photo"): a person only when the prompt
    puts whoever is in it in a harmful context (a photo of a cat is no person)."""

    @property
    def any(self) -> bool:
        return bool(self.public or self.named or self.personal or self.photo)


def load_first_names() -> frozenset[str]:
    raw = resources.files("reelgen.safety").joinpath("data/first_names.txt").read_text("utf-8")
    return frozenset(w.strip() for w in raw.splitlines() if w.strip() and not w.startswith("#"))


def load_gazetteer(path: str | None = None) -> list[list[str]]:
    if path is None:
        text = resources.files("reelgen.safety").joinpath("data/public_figures.txt")
        raw = text.read_text("utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    rows = []
    for line in raw.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append([n.strip() for n in line.split("|") if n.strip()])
    return rows


class PersonFinder:
    def __init__(
        self,
        gazetteer: Iterable[list[str]],
        personal: Iterable[str],
        first_names: Iterable[str] = (),
        photo: Iterable[str] = (),
    ):
        self._names: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)
        self._joined: list[tuple[str, str]] = []
        """Full names written as one word (`badbunny`): looked for in spelled-out words."""
        first_names = set(first_names)
        for names in gazetteer:
            canonical = names[0]
            for name in names:
                words = term_skeleton(name)
                if words:
                    self._names[words[0]].append((words, canonical))
                    if len(words) > 1:
                        self._joined.append(("".join(words), canonical))
        self._first_names = frozenset(first_names)
        self._personal: dict[str, list[tuple[tuple[str, ...], bool]]] = defaultdict(list)
        """first word -> (words, whether it is a photo reference)"""
        for terms, is_photo in ((personal, False), (photo, True)):
            for term in terms:
                words = term_skeleton(term)
                if words:
                    self._personal[words[0]].append((words, is_photo))

    def find(self, original: str, text: Normalized) -> People:
        tokens = text.tokens
        public: dict[str, None] = {}
        personal: dict[str, None] = {}
        photo: dict[str, None] = {}
        for i, readings in enumerate(tokens):
            for word in readings:
                for words, canonical in self._names.get(word, ()):
                    if phrase_at(tokens, i, words):
                        public[canonical] = None
                for words, is_photo in self._personal.get(word, ()):
                    if phrase_at(tokens, i, words):
                        (photo if is_photo else personal)[" ".join(words)] = None
        for spelled in text.spelled:
            for joined, canonical in self._joined:
                if joined in spelled:
                    public[canonical] = None
        named: dict[str, None] = {}
        for m in _NAME.finditer(original):
            first = plain(m.group(1))
            if first in self._first_names:
                named[f"{m.group(1)} {m.group(2)}"] = None
        return People(tuple(public), tuple(named), tuple(personal), tuple(photo))
