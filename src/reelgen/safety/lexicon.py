"""Term lists (`data/lexicon.json`, five languages each) and the matcher that finds them in
a normalised prompt: whole words, `prefix*` terms, multi-word phrases, masked words
(`s*x`), and risky terms inside long compounds (`kinderporno`). Phrases from the
`benign_phrases` list ("kill the lights") are taken out first, so their words count for
nothing else."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

from reelgen.safety.normalize import Normalized, phrase_at, term_skeleton

BENIGN = "benign_phrases"
COMPOUND_LISTS = frozenset({"minor", "sexual", "sexual_explicit", "gore", "minor_sexual"})
"""Lists whose terms also count inside a long word (German compounds, glued words)."""
COMPOUND_MIN_TERM = 6
"""Shorter terms hide in too many harmless words (`child` in German `Nummernschild`)."""
COMPOUND_MIN_WORD = 9


def load_lists(path: str | None = None) -> dict[str, list[str]]:
    """Every list, all languages merged (the rules do not need to know the language)."""
    if path is None:
        raw = resources.files("reelgen.safety").joinpath("data/lexicon.json").read_text("utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    data: dict[str, dict[str, list[str]]] = json.loads(raw)
    return {
        name: [t for terms in by_lang.values() for t in terms] for name, by_lang in data.items()
    }


@dataclass(frozen=True, slots=True)
class Match:
    lists: Mapping[str, frozenset[str]]
    """List name -> the terms of it found."""

    def has(self, name: str) -> bool:
        return bool(self.lists.get(name))

    def terms(self, name: str) -> frozenset[str]:
        return self.lists.get(name, frozenset())


class Lexicon:
    def __init__(self, lists: Mapping[str, Iterable[str]]):
        self.names = tuple(lists)
        self._words: dict[str, set[str]] = defaultdict(set)
        self._prefixes: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._phrases: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)
        """first word -> (all words, list name)"""
        self._by_length: dict[int, list[tuple[str, str]]] = defaultdict(list)
        """word length -> (word, list): the candidates of a masked word"""
        self._compound: list[tuple[str, str]] = []
        self._short: list[tuple[str, str]] = []
        """Every single-word term of 3 letters or more: looked for inside spelled words."""
        self._benign: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        for name, terms in lists.items():
            for term in terms:
                self._add(name, term)

    def _add(self, name: str, term: str) -> None:
        prefix = term.endswith("*")
        words = term_skeleton(term.rstrip("*"))
        if not words:
            return
        if name == BENIGN:
            self._benign[words[0]].append(words)
            return
        if len(words) > 1:
            self._phrases[words[0]].append((words, name))
            joined = "".join(words)
            if len(words) <= 3 and len(joined) >= 6:  # "self harm" written "selfharm"
                self._words[joined].add(name)
            return
        word = words[0]
        if prefix:
            self._prefixes[len(word)][word].add(name)
            return
        self._words[word].add(name)
        self._by_length[len(word)].append((word, name))
        if len(word) >= 3:
            self._short.append((word, name))
        if name in COMPOUND_LISTS and len(word) >= COMPOUND_MIN_TERM:
            self._compound.append((word, name))

    def match(self, text: Normalized) -> Match:
        found: dict[str, set[str]] = defaultdict(set)
        tokens = text.tokens
        skip = self._benign_spans(tokens)
        for i, readings in enumerate(tokens):
            if i in skip:
                continue
            for word in readings:
                for name in self._words.get(word, ()):
                    found[name].add(word)
                for length, table in self._prefixes.items():
                    if len(word) >= length:
                        for name in table.get(word[:length], ()):
                            found[name].add(word[:length] + "*")
                for words, name in self._phrases.get(word, ()):
                    if phrase_at(tokens, i, words, skip):
                        found[name].add(" ".join(words))
                if len(word) >= COMPOUND_MIN_WORD and word not in self._words:
                    for term, name in self._compound:
                        if term in word:
                            found[name].add(term)
        for spelled in text.spelled:
            for term, name in self._short:
                if term in spelled:
                    found[name].add(term)
        for length, pattern in text.masks:
            for word, name in self._by_length.get(length, ()):
                if pattern.fullmatch(word):
                    found[name].add(word)
        return Match({name: frozenset(terms) for name, terms in found.items()})

    def _benign_spans(self, tokens: tuple[tuple[str, ...], ...]) -> set[int]:
        covered: set[int] = set()
        for i, readings in enumerate(tokens):
            for word in readings:
                for words in self._benign.get(word, ()):
                    if phrase_at(tokens, i, words):
                        covered.update(range(i, i + len(words)))
        return covered
