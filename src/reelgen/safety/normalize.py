"""Text as the safety rules read it, whatever tricks were used to write it.

Two views of one prompt:
- `plain`: compatibility-normalised (full-width and styled letters become ASCII), look-alike
  letters of other scripts mapped to the Latin ones they imitate, invisible characters
  dropped, case folded, accents stripped. Digits stay (ages are read from it). The learned
  classifier and the gazetteer read this.
- `tokens`: each word reduced to a skeleton: leetspeak decoded (`n4k3d`), punctuation inside
  the word dropped (`n.a.k.e.d`, `s-e-x`), letters stretched three times or more offered
  both squeezed and collapsed (`naaaked`), letters spelled out one by one joined back
  (`s e x`); a word may have several readings (`1` is an `i` or an `l`), and a lexicon term
  matches if any reading equals it. Lexicon terms go through the same function, so both
  sides meet in the middle.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

_INVISIBLE = dict.fromkeys(
    map(ord, "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
             "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\ufeff"),
    None,
)  # fmt: skip

# Letters of other scripts (and Latin variants) that look like a Latin letter; the Latin
# letter they pass for. Full-width, circled, mathematical and small styled letters are
# already folded by NFKC.
_LOOKALIKES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i",
        "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ү": "y", "ɡ": "g", "ӏ": "l",
        "А": "a", "В": "b", "Е": "e", "Ё": "e", "К": "k", "М": "m", "Н": "h", "О": "o",
        "Р": "p", "С": "c", "Т": "t", "У": "y", "Х": "x", "Ѕ": "s", "І": "i", "Ї": "i",
        "Ј": "j", "Һ": "h", "Ԁ": "d", "Ԛ": "q", "Ԝ": "w", "Ү": "y", "Ӏ": "l",
        # Greek
        "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
        "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "c",
        "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m",
        "Ν": "n", "Ο": "o", "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x",
        # Armenian and Latin variants
        "օ": "o", "ս": "u", "ց": "g", "ı": "i", "ȷ": "j", "ɑ": "a", "ʀ": "r", "ɪ": "i",
        "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h",
        "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ꜱ": "s",
        "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
        # letters NFD does not split into base + accent
        "ø": "o", "Ø": "o", "đ": "d", "Đ": "d", "ł": "l", "Ł": "l", "æ": "ae", "Æ": "ae",
        "œ": "oe", "Œ": "oe", "þ": "th", "ß": "ss", "ħ": "h",
    }
)  # fmt: skip

_LEET = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a",
         "$": "s", "€": "e", "+": "t"}  # fmt: skip
_ONE_LIKE = frozenset("1|!")
"""Read as `i` or as `l`: both readings are kept."""

_SPLIT = re.compile(r"[\s,;:/\\()\[\]{}<>\"?¿¡“”«»'’ʼ`]+")
_EDGE_LEAD = re.compile(r"^[^\w$@|!]+")
_EDGE_TRAIL = re.compile(r"[^\w]+$")
_NOT_LETTER = re.compile(r"[^a-z]+")
_MASK = re.compile(r"^[a-z0-9$@|!]+(?:[*#_.]+[a-z0-9$@|!]+)*$")
_STRETCH = re.compile(r"([a-z])\1{2,}")
_RUN = re.compile(r"([a-z])\1+")


@dataclass(frozen=True, slots=True)
class Normalized:
    plain: str
    words: tuple[str, ...]
    """`plain` split into words (punctuation at their edges removed)."""
    tokens: tuple[tuple[str, ...], ...]
    """Per word, its skeleton readings (first: the likeliest); empty words dropped. A
    hyphenated word is followed by its parts (`loli-hentai`), a run of spelled-out letters
    by the word they make."""
    spelled: tuple[str, ...]
    """Words joined back from spelled-out letters (`b a d b u n n y`): what they hide may
    be several words run together, so terms are also looked for inside them."""
    masks: tuple[tuple[int, re.Pattern[str]], ...]
    """Words with letters hidden behind `*`/`#`/`_` (`s*x`): (letters, pattern over the
    skeletons of that length)."""

    @property
    def skeleton(self) -> str:
        return " ".join(readings[0] for readings in self.tokens)


def plain(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    text = _map_lookalikes(text).casefold()
    decomposed = unicodedata.normalize("NFD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", stripped)


def _map_lookalikes(text: str) -> str:
    """Maps look-alikes in words that mix them with Latin letters (`сеx`) or consist of
    them only; a word written wholly in, say, Cyrillic with other letters stays as it is."""
    out = []
    for word in text.split(" "):
        mapped = word.translate(_LOOKALIKES)
        if mapped != word and (_is_latin_mix(word) or mapped.isascii()):
            word = mapped
        out.append(word)
    return " ".join(out)


def _is_latin_mix(word: str) -> bool:
    return any("a" <= ch.lower() <= "z" for ch in word)


def readings(word: str) -> tuple[str, ...]:
    """A word's skeleton readings: leet decoded, non-letters dropped, stretches squeezed."""
    word = _EDGE_TRAIL.sub("", _EDGE_LEAD.sub("", word))
    if not word:
        return ()
    has_letter = any("a" <= ch <= "z" for ch in word)
    if has_letter or len(word) > 1:
        word = "".join(_LEET.get(ch, ch) for ch in word)
    bases = [word]
    if any(ch in _ONE_LIKE for ch in word):
        bases = [_sub_one(word, "i"), _sub_one(word, "l")]
    out: list[str] = []
    for base in bases:
        letters = _NOT_LETTER.sub("", base)
        if not letters:
            continue
        out.append(letters)
        if _STRETCH.search(letters):
            out.append(_STRETCH.sub(r"\1\1", letters))
            out.append(_RUN.sub(r"\1", letters))
    return tuple(dict.fromkeys(out))


def _sub_one(word: str, letter: str) -> str:
    return "".join(letter if ch in _ONE_LIKE else ch for ch in word)


def term_skeleton(term: str) -> tuple[str, ...]:
    """A lexicon term as the words it must match (one reading each)."""
    out = []
    for word in _SPLIT.split(plain(term)):
        r = readings(word)
        if r:
            out.append(r[0])
    return tuple(out)


def normalize(text: str) -> Normalized:
    p = plain(text)
    words = tuple(
        w for w in (_EDGE_TRAIL.sub("", _EDGE_LEAD.sub("", x)) for x in _SPLIT.split(p)) if w
    )
    tokens: list[tuple[str, ...]] = []
    masks: list[tuple[int, re.Pattern[str]]] = []
    run: list[str] = []
    """Single letters in a row (`s e x`): joined back into one word at the run's end."""

    spelled: list[str] = []

    def close_run() -> None:
        """Three or more spelled-out letters stand for the word they make, in their place."""
        if len(run) >= 3:
            del tokens[len(tokens) - len(run) :]
            joined = "".join(run)
            # a one-letter word before the spelled one ("a s e x") is read both ways
            tokens.append(
                (joined, joined[1:]) if len(run) >= 4 and run[0] in "aeiouy" else (joined,)
            )
            spelled.append(joined)
        run.clear()

    for raw in _SPLIT.split(p):
        r = readings(raw)
        if not r:
            continue
        stripped = _EDGE_TRAIL.sub("", _EDGE_LEAD.sub("", raw))
        if len(r[0]) == 1 and len(stripped) <= 2:
            run.append(r[0])
            tokens.append(r)
            continue
        close_run()
        tokens.append(r)
        if any(ch in "*#_" for ch in stripped) and _MASK.match(stripped):
            masks.append(_mask_pattern(stripped))
        parts = [readings(x) for x in stripped.split("-")] if "-" in stripped else []
        if len(parts) > 1 and all(len(x[0]) >= 2 for x in parts if x):
            tokens.extend(x for x in parts if x)
    close_run()
    return Normalized(
        plain=p, words=words, tokens=tuple(tokens), spelled=tuple(spelled), masks=tuple(masks)
    )


def _mask_pattern(word: str) -> tuple[int, re.Pattern[str]]:
    parts: list[str] = []
    for ch in word:
        if ch in "*#_":
            parts.append("[a-z]")
        elif ch == ".":
            continue
        else:
            letter = _LEET.get(ch, "i" if ch in _ONE_LIKE else ch)
            if letter.isalpha():
                parts.append(letter)
    return len(parts), re.compile("".join(parts))


def phrase_at(
    tokens: tuple[tuple[str, ...], ...],
    i: int,
    words: tuple[str, ...],
    skip: AbstractSet[int] = frozenset(),
) -> bool:
    """Whether `words` (skeletons) are read at token `i` onwards, none of them in `skip`."""
    if i + len(words) > len(tokens):
        return False
    return all(i + k not in skip and words[k] in tokens[i + k] for k in range(len(words)))
