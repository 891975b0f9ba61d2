"""Hard negatives made from the phrase itself, and the check that no negative is the phrase.

Near misses are built on the phrase's English phonemes (espeak's en-us names), one edit each:
  part        a word (or run of words) of the phrase alone: "hey", "sirius"
  substitute  one phoneme swapped for a confusable one: s -> z, r -> l, eI -> aI ...
  drop        one syllable left out: "hey rius", "hey sir us"
  add         one syllable inserted inside the phrase (never before or after it)
  rhyme       a word's onset replaced: "say sirius", "hey dirius"

A negative (generated or from the config's lists) is rejected when its phonemes, compared by
class (stress, espeak's allophone digits and reduced-vowel variants ignored: I2 = I, @2 = @),
*contain* the phrase's: equal strings, homophones ("hay sirius") and supersets ("hey sirius
please") are the phrase as far as a listener is concerned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from raykd.data.voices import SILENT, STRESS, SynthError, english_words

# Allophones and reduced variants that a listener hears as the same phoneme.
PHONEME_CLASS = {"I2": "I", "I#": "I", "@2": "@", "@5": "@", "3": "@", "a#": "@", "r-": "r", "t#": "t", "t2": "t",
                 "d#": "d", "i:": "i", "O2": "O", "E2": "E", "n-": "n", "l/": "l", "i@3": "i@"}
CONFUSABLE = {
    "h": ["k", "f", "S"], "s": ["z", "S", "T", "f"], "z": ["s", "Z"], "S": ["s", "tS"], "r": ["l", "w"],
    "l": ["r", "w"], "t": ["d", "k", "p"], "d": ["t", "g", "b"], "k": ["g", "t"], "g": ["k", "d"],
    "p": ["b", "t"], "b": ["p", "d"], "m": ["n"], "n": ["m", "N"], "f": ["v", "T"], "v": ["f", "b"],
    "w": ["r", "v"], "j": ["w"], "eI": ["aI", "i:", "E", "oU"], "aI": ["eI", "OI", "a"], "I": ["i:", "E", "aI"],
    "i": ["aI", "eI", "u:"], "i:": ["I", "eI"], "@": ["oU", "i:", "aI"], "E": ["I", "a", "eI"], "a": ["E", "V"],
    "V": ["a", "0"], "0": ["V", "oU"], "oU": ["aU", "u:", "O:"], "u:": ["oU", "i:"], "U": ["u:", "V"],
    "i@": ["E", "aI"], "3:": ["A:", "O:"], "A:": ["3:", "eI"], "O:": ["oU", "A:"], "aU": ["oU", "aI"],
}
ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "t", "w", "S", "tS", "dZ", "j"]
ADDED = ["r@", "n@", "l@", "@"]  # syllables inserted inside the phrase
VOWEL = re.compile(r"[aeiouAEIOUV0@&3]")


@dataclass(frozen=True)
class NearMiss:
    """`text` is shown in the manifest; `phonemes` (English phoneme names per word) is what is
    spoken, or None for plain text."""

    text: str
    op: str
    phonemes: tuple[tuple[str, ...], ...] | None = None


def _name(token: str) -> str:
    return token.lstrip(STRESS)


def classes(words) -> tuple[str, ...]:
    """Phoneme classes of phoneme words, flat: what `contains_phrase` compares."""
    return tuple(PHONEME_CLASS.get(_name(t), _name(t)) for w in words for t in w if _name(t) not in SILENT)


def _contains(seq: tuple[str, ...], sub: tuple[str, ...]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def phonemes_of(text: str) -> tuple[tuple[str, ...], ...]:
    """English phoneme names per word of `text` (espeak en-us, cached)."""
    return english_words(text)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def contains_phrase(candidate: NearMiss | str, phrase: str) -> bool:
    """True when `candidate` says the phrase: same words after normalisation, or phonemes that
    contain the phrase's (by class)."""
    target = classes(phonemes_of(phrase))
    if isinstance(candidate, str):
        candidate = NearMiss(candidate, "text")
    if candidate.phonemes is None and f" {normalise(phrase)} " in f" {normalise(candidate.text)} ":
        return True
    words = candidate.phonemes if candidate.phonemes is not None else phonemes_of(candidate.text)
    return _contains(classes(words), target)


def check_texts(texts: tuple[str, ...], phrase: str, key: str) -> None:
    """SynthError naming `key` when one of the configured negatives says the phrase."""
    for t in texts:
        if contains_phrase(t, phrase):
            raise SynthError(f"{key}: {t!r} says the phrase {phrase!r} (a negative must not)")


def _display(words) -> str:
    return "[[" + " ".join("".join(w) for w in words) + "]]"


def _syllables(word: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) token spans: each vowel with the consonants before it; trailing ones join the last."""
    spans, start = [], 0
    for i, t in enumerate(word):
        if VOWEL.search(_name(t)) and _name(t) not in SILENT:
            spans.append((start, i + 1))
            start = i + 1
    if spans and start < len(word):
        spans[-1] = (spans[-1][0], len(word))
    return spans


def _edits(words: tuple[tuple[str, ...], ...], text_words: list[str]):
    """Every one-edit candidate as (op, phoneme words or plain text)."""
    n = len(words)
    for i in range(n):  # parts: runs of words, never the whole phrase
        for j in range(i + 1, n + 1):
            if (i, j) != (0, n):
                yield "part", " ".join(text_words[i:j]) if len(text_words) == n else words[i:j]
    for w, word in enumerate(words):
        for k, token in enumerate(word):
            stress, name = token[:len(token) - len(_name(token))], _name(token)
            for sub in CONFUSABLE.get(name, []):
                yield "substitute", words[:w] + (word[:k] + (stress + sub,) + word[k + 1:],) + words[w + 1:]
        spans = _syllables(word)
        for a, b in spans if len(spans) > 1 or n > 1 else []:
            rest = word[:a] + word[b:]
            yield "drop", words[:w] + ((rest,) if rest else ()) + words[w + 1:]
        for a, _ in spans[1:]:  # inside a word
            for syl in ADDED:
                yield "add", words[:w] + (word[:a] + (syl,) + word[a:],) + words[w + 1:]
        first = next((k for k, t in enumerate(word) if VOWEL.search(_name(t))), None)
        if first is not None:
            for onset in ONSETS:
                yield "rhyme", words[:w] + ((onset,) + word[first:],) + words[w + 1:]
    for w in range(1, n):  # a syllable between two words
        for syl in ADDED:
            yield "add", words[:w] + ((syl,),) + words[w:]


def generate(phrase: str, count: int, seed: int) -> list[NearMiss]:
    """Up to `count` distinct near misses of `phrase`, none of which says it; the operations
    take turns so each kind is represented. Deterministic in (phrase, count, seed)."""
    if count == 0:
        return []
    words = phonemes_of(phrase)
    if not words:
        raise SynthError(f"data.synth.phrase: espeak-ng finds no phonemes in {phrase!r}")
    by_op: dict[str, list[NearMiss]] = {}
    seen = {classes(words)}
    for op, cand in _edits(words, phrase.split()):
        nm = NearMiss(cand, op) if isinstance(cand, str) else NearMiss(_display(cand), op, cand)
        key = classes(nm.phonemes if nm.phonemes is not None else phonemes_of(nm.text))
        if key in seen or not key or contains_phrase(nm, phrase):
            continue
        seen.add(key)
        by_op.setdefault(op, []).append(nm)
    rng = np.random.default_rng([seed, 7])
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_op.items())]
    out: list[NearMiss] = []
    while len(out) < count and any(queues):
        for q in queues:
            if q and len(out) < count:
                out.append(q.pop(0))
    return out
