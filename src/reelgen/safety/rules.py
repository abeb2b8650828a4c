"""Rule scores per category from what the lexicon and the person finder found, with
co-occurrence logic: a minor together with anything sexual, a real person together with a
sexual, degrading, deceptive or violent context (or shown photorealistically without
consent), violence together with what makes it graphic. A rule's score is its confidence:
1.0 for a combination that is always disallowed, lower for signals that only suggest it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from reelgen.safety.lexicon import Match
from reelgen.safety.people import People
from reelgen.safety.verdict import Category

_NUMBER_WORDS = {
    # en, es, fr, de, pt (accents stripped, as `plain` leaves them)
    **dict.fromkeys(["one", "uno", "un", "une", "eins", "ein", "um"], 1),
    **dict.fromkeys(["two", "dos", "deux", "zwei", "dois", "duas"], 2),
    **dict.fromkeys(["three", "tres", "trois", "drei"], 3),
    **dict.fromkeys(["four", "cuatro", "quatre", "vier", "quatro"], 4),
    **dict.fromkeys(["five", "cinco", "cinq", "funf"], 5),
    **dict.fromkeys(["six", "seis", "sechs"], 6),
    **dict.fromkeys(["seven", "siete", "sept", "sieben", "sete"], 7),
    **dict.fromkeys(["eight", "ocho", "huit", "acht", "oito"], 8),
    **dict.fromkeys(["nine", "nueve", "neuf", "neun", "nove"], 9),
    **dict.fromkeys(["ten", "diez", "dix", "zehn", "dez"], 10),
    **dict.fromkeys(["eleven", "once", "onze", "elf"], 11),
    **dict.fromkeys(["twelve", "doce", "douze", "zwolf", "doze"], 12),
    **dict.fromkeys(["thirteen", "trece", "treize", "dreizehn", "treze"], 13),
    **dict.fromkeys(["fourteen", "catorce", "quatorze", "vierzehn", "catorze"], 14),
    **dict.fromkeys(["fifteen", "quince", "quinze", "funfzehn"], 15),
    **dict.fromkeys(["sixteen", "dieciseis", "seize", "sechzehn", "dezesseis"], 16),
    **dict.fromkeys(["seventeen", "diecisiete", "dix-sept", "siebzehn", "dezessete"], 17),
}
_AGE_NUMBER = (
    r"(\d{1,2}|" + "|".join(sorted(map(re.escape, _NUMBER_WORDS), key=len, reverse=True)) + ")"
)
_AGE_AFTER = (
    r"(?:-|\s)*(?:years?|yrs?|yo|y/o|y\.o\.?|anos|ans|an|jahre|jahrig\w*|jahrige\w*)"
    r"(?:(?:-|\s)*(?:old|de\s+edad|de\s+idade|alt))?"
)
_AGE = re.compile(rf"\b{_AGE_NUMBER}{_AGE_AFTER}(?![a-z])")
_AGE_BEFORE = re.compile(
    rf"\b(?:aged?|age\s+of|edad\s+de|idade\s+de|ag[ee]e?s?\s+de|im\s+alter\s+von|alter)\s+{_AGE_NUMBER}\b"
)


def ages(plain: str) -> list[int]:
    """Ages a prompt states ("12-year-old", "aged 12", "doce años", "12 ans", "12-jährige")."""
    out = []
    for pattern in (_AGE, _AGE_BEFORE):
        for m in pattern.finditer(plain):
            value = m.group(1)
            n = int(value) if value.isdigit() else _NUMBER_WORDS.get(value, 99)
            out.append(n)
    return out


@dataclass(frozen=True, slots=True)
class Context:
    """What the request says about itself besides the prompt."""

    stylized: bool = False
    """The request's style is clearly not photoreal (an `anime` style, say)."""
    consent: bool = False
    """Consent to depict the real person is recorded (a flag on the user or request)."""
    reference_face: bool = False
    """The reference image shows a photoreal face."""


def score(
    found: Match, people: People, plain: str, ctx: Context
) -> tuple[dict[Category, float], dict[str, object]]:
    scores = dict.fromkeys(Category, 0.0)
    signals: list[str] = []
    sexual = found.has("sexual") or found.has("sexual_explicit")
    explicit = found.has("sexual_explicit")
    minor_ages = [a for a in ages(plain) if a < 18]
    minor = found.has("minor") or bool(minor_ages)

    if found.has("minor_sexual"):
        scores[Category.SEXUAL_MINORS] = 1.0
        signals.append("minor_sexual")
    if minor and sexual:
        scores[Category.SEXUAL_MINORS] = 1.0
        signals.append("minor+sexual")
    elif found.has("minor_weak") and explicit:
        scores[Category.SEXUAL_MINORS] = max(scores[Category.SEXUAL_MINORS], 0.4)
        signals.append("minor_weak+explicit")

    art = found.has("art_context")
    if explicit:
        scores[Category.SEXUAL] = 1.0
        signals.append("sexual_explicit")
    elif sexual:
        scores[Category.SEXUAL] = 0.3 if art else 0.8
        signals.append("sexual+art" if art else "sexual")

    gore = found.has("gore")
    violent = found.has("violent_act")
    if gore:
        scores[Category.VIOLENCE_GRAPHIC] = 0.9
        signals.append("gore")
    elif violent and found.has("graphic_modifier"):
        scores[Category.VIOLENCE_GRAPHIC] = 0.8
        signals.append("violent+graphic")

    harmful_context = (
        sexual
        or found.has("degrading")
        or found.has("deceptive")
        or violent
        or gore
        or found.has("graphic_modifier")
    )
    real = people.public or people.personal or ctx.reference_face
    stylized = ctx.stylized or (found.has("stylized") and not found.has("photoreal"))
    if real and harmful_context:
        scores[Category.REAL_PERSON] = 1.0
        signals.append("person+context")
    elif (people.named or people.photo) and harmful_context:
        scores[Category.REAL_PERSON] = 0.6
        signals.append("name+context")
    elif real and not ctx.consent and not stylized:
        # A photoreal clip of a real person (the model's default look unless a style says
        # otherwise) needs recorded consent.
        scores[Category.REAL_PERSON] = 0.9 if found.has("photoreal") else 0.7
        signals.append("person+photoreal")

    if found.has("hate"):
        scores[Category.HATE] = 0.9
        signals.append("hate")
    if found.has("self_harm"):
        scores[Category.SELF_HARM] = 0.9
        signals.append("self_harm")
    details: dict[str, object] = {"signals": signals, "minor": minor}
    if people.any:
        details["people"] = [*people.public, *people.named, *people.personal]
    return scores, details
