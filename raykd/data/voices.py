"""espeak-ng through ctypes (PyPI espeakng-loader), and the pool of speakers it can give.

A speaker is "<voice>+<variant>": a language voice (the accent) and a variant (the timbre).
English voices read the text; every other voice reads the *English phonemes* of the text
(espeak's own `[[...]]` phoneme input, the phonemes taken from the en-us voice), each
phoneme its own table lacks replaced by the nearest one it has (PHONEME_FALLBACK): accented
English. A voice is in the pool only when it can say every phoneme of the phrase, at most
half of them by a substitute (see `voice_mapping`).

Voice families (what validation and test hold out whole, see README "Data"):
  en-us, en-gb, en-scotland, en-caribbean   the English voices by region
  klatt                                     any voice with a klatt-synthesiser variant
  germanic, romance, slavic, baltic-uralic, south-asian, east-asian, turkic,
  west-asian, celtic, greek, other          espeak's language groups (ISO 639-5), merged
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raykd.data.audio import DatasetError


class SynthError(DatasetError):
    """The synth config cannot produce a usable dataset (unknown voice, clip too short...)."""


ENGLISH_FAMILIES = {"en-us": "en-us", "en-us-nyc": "en-us", "en": "en-gb", "en-gb-x-rp": "en-gb",
                    "en-gb-x-gbclan": "en-gb", "en-gb-x-gbcwmd": "en-gb", "en-gb-scotland": "en-scotland",
                    "en-029": "en-caribbean"}
GROUP_FAMILIES = {"gmw": "germanic", "gmq": "germanic", "roa": "romance", "itc": "romance",
                  "zle": "slavic", "zls": "slavic", "zlw": "slavic", "bat": "baltic-uralic",
                  "urj": "baltic-uralic", "inc": "south-asian", "dra": "south-asian", "sit": "east-asian",
                  "jpx": "east-asian", "ko": "east-asian", "aav": "east-asian", "tai": "east-asian",
                  "trk": "turkic", "sem": "west-asian", "ira": "west-asian", "ine": "west-asian",
                  "ccs": "west-asian", "cel": "celtic", "grk": "greek"}
# Not accents a person speaks with: espeak's test voice, constructed languages, second
# spellings of a language whose phoneme table is already in the pool, and voices shipped
# without their dictionary (espeak complains on stderr at every use).
EXCLUDED_VOICES = {"xex", "en-shaw", "cmn-latn-pinyin", "yue-latn-jyutping", "fa-latn", "fo", "kaa"}
EXCLUDED_GROUPS = {"art"}
# Sound effects rather than timbres: robots, heavy echo, a speed test.
EXCLUDED_VARIANTS = {"fast", "Demonic", "UniRobot", "anikaRobot", "RicishayMax", "RicishayMax2",
                     "RicishayMax3", *(f"robosoft{s}" for s in ("", "2", "3", "4", "5", "6", "7", "8"))}
# English phoneme (espeak mnemonic) -> substitutes, nearest first; each a space-separated
# phoneme sequence. Tried in order; a phoneme without a usable one is a miss.
PHONEME_FALLBACK = {
    "I": ["i"], "I2": ["I", "i"], "I#": ["I", "i"], "i": ["i:", "I"], "i:": ["i"], "i@": ["i @", "i e"],
    "i@3": ["i@", "i @", "i e"], "@": ["@2", "e", "E", "a"], "@2": ["@", "e", "a"], "@5": ["@", "u"],
    "3": ["@", "e", "E"], "3:": ["@", "e:", "e", "E"], "@L": ["@ l", "e l", "l"], "eI": ["e I", "e i", "e j", "e"],
    "aI": ["a I", "a i", "a j"], "OI": ["O I", "o i", "o j"], "aU": ["a U", "a u", "a w"], "oU": ["o U", "o u", "o"],
    "e@": ["e @", "E", "e"], "U@": ["U @", "u @", "u"], "A@": ["A: r", "a r", "a"], "O@": ["O: r", "o r", "o"],
    "a": ["a#", "&", "A"], "a#": ["a", "@"], "&": ["a", "E"], "A:": ["A", "a:", "a"], "0": ["O", "o", "a"],
    "O:": ["O", "o:", "o"], "O2": ["O", "o"], "V": ["@", "a", "A"], "U": ["u"], "u:": ["u"], "E": ["e"],
    "E2": ["E", "e"], "r": ["R", "*", "r-", "l"], "r-": ["r", "R"], "t#": ["t"], "t2": ["t"], "d#": ["d"],
    "D": ["d", "z"], "T": ["t", "s", "f"], "S": ["s"], "Z": ["z", "S"], "tS": ["t S", "t s"],
    "dZ": ["d Z", "d z"], "h": ["x", "h#"], "w": ["u", "v"], "j": ["i", "I"], "N": ["n g", "n"], "z": ["s"],
    "v": ["w", "b", "f"], "n-": ["n"], "l/": ["l"], "l": ["l^", "r"],
}
SILENT = {";", "_", "_:", "_!", "_|", ""}  # modifiers and pauses: never a miss
STRESS = "',%=!"


@dataclass(frozen=True)
class Speaker:
    """One voice x variant of the pool; `speak(text)` is the string espeak reads for `text`."""

    id: str
    voice: str
    variant: str
    family: str
    english: bool
    accent: str = ""  # the voice's family were the variant not klatt (= family otherwise)


# ----------------------------------------------------------------------------- engine


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


class Espeak:
    """libespeak-ng in synchronous mode, one per process (the library is not thread safe).

    espeak keeps waveform state (glottal phase, pitch flutter) from one utterance to the
    next and draws noise from a clock-seeded generator (and libc rand()), so the same call
    twice gives different samples. Every utterance therefore starts from a freshly loaded
    library (dlclose + dlopen resets its statics; ~0.5 ms, plus ~4 ms to reload the voice)
    with both generators seeded: a clip depends on its own arguments only.
    """

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    INITIALIZE_PHONEME_EVENTS, INITIALIZE_DONT_EXIT = 0x0001, 0x8000
    RATE, PITCH, RANGE, WORDGAP = 1, 3, 4, 7  # espeak_PARAMETER
    POS_CHARACTER, CHARS_UTF8, PHONEMES = 1, 1, 0x100
    EVENT_LIST_TERMINATED, EVENT_PHONEME = 0, 7
    CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))

    def __init__(self) -> None:
        import espeakng_loader

        self.lib_path = espeakng_loader.get_library_path()
        self.data_path = Path(espeakng_loader.get_data_path())
        self._chunks: list[np.ndarray] = []
        self._phonemes: list[str] = []
        self._callback = self.CALLBACK(self._collect)  # held: ctypes must not free it
        self._lock = threading.Lock()
        self.lib = self._load()
        self._used = False
        self._libc = ctypes.CDLL(None)  # the process's libc, whose rand() espeak calls

    def _load(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(self.lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        # buflength 1000 ms: few callbacks per phrase
        self.sample_rate = lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 1000, str(self.data_path).encode(),
                                                 self.INITIALIZE_DONT_EXIT | self.INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise SynthError(f"espeak-ng failed to initialise with data at {self.data_path}")
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    def _fresh(self) -> None:
        if self._used:
            self.lib.espeak_Terminate()
            _ctypes.dlclose(self.lib._handle)
            self.lib = self._load()
        self._used = True

    def _collect(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events and events[i].type != self.EVENT_LIST_TERMINATED:
            if events[i].type == self.EVENT_PHONEME:
                self._phonemes.append(events[i].id.decode("utf-8", "replace"))
            i += 1
        return 0  # 0 = continue

    def _synth(self, text: str) -> None:
        self._chunks, self._phonemes = [], []
        blob = text.encode() + b"\0"
        err = self.lib.espeak_Synth(blob, len(blob), 0, self.POS_CHARACTER, 0, self.CHARS_UTF8 | self.PHONEMES,
                                    None, None)
        if err != 0:
            raise SynthError(f"espeak-ng failed on {text!r} (error {err})")

    def check_speaker(self, speaker: str) -> None:
        """Raise SynthError for an unknown voice or variant (espeak ignores a bad variant)."""
        voice, _, variant = speaker.partition("+")
        if variant and not (self.data_path / "voices" / "!v" / variant).is_file():
            raise SynthError(f"data.synth.variants: espeak-ng has no variant {variant!r}")
        with self._lock:
            self._used = True  # any call may leave state behind: the next say() reloads
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SynthError(f"data.synth.voices: espeak-ng has no voice {voice!r}")

    def say(self, text: str, speaker: str, rate: int, pitch: int, seed: int = 0,
            pitch_range: int = 50, word_gap: int = 0) -> np.ndarray:
        """(n,) int16 samples at self.sample_rate (22050 Hz); same arguments, same samples.

        `text` may hold espeak phoneme input in [[...]]; pitch_range is espeak's intonation
        range (0 = monotone, 50 = normal); word_gap adds word_gap x 10 ms between words.
        """
        with self._lock:
            self._fresh()
            self._libc.srand(ctypes.c_uint(seed))
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))  # espeak seeds it from the clock
            if self.lib.espeak_SetVoiceByName(speaker.encode()) != 0:
                raise SynthError(f"data.synth.voices: espeak-ng has no voice {speaker!r}")
            for param, value in ((self.RATE, rate), (self.PITCH, pitch), (self.RANGE, pitch_range),
                                 (self.WORDGAP, word_gap)):
                self.lib.espeak_SetParameter(param, value, 0)
            self._synth(text)
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)

    def phonemes_spoken(self, voice: str, phonemes: str) -> list[str]:
        """The phoneme names `voice` actually utters for the phoneme input `phonemes`."""
        with self._lock:
            self._used = True
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SynthError(f"data.synth.voices: espeak-ng has no voice {voice!r}")
            self._synth(f"[[{phonemes}]]")
            return [p for p in self._phonemes if p not in SILENT]

    def english_phonemes(self, text: str) -> list[list[str]]:
        """Words of `text` as en-us phoneme names (stress marks kept on their phoneme)."""
        with self._lock:
            self._used = True
            self.lib.espeak_SetVoiceByName(b"en-us")
            ptr, words = ctypes.c_char_p(text.encode()), []
            while ptr.value:
                clause = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), self.CHARS_UTF8, ord("/") << 8)
                words += [w.split("/") for w in (clause or b"").decode().split()]
            return words

    def list_voices(self) -> list[tuple[str, str]]:
        """(name for SetVoiceByName, language group) of every voice espeak ships, sorted."""
        with self._lock:
            self._used = True
            out, voices, i = [], self.lib.espeak_ListVoices(None), 0
            while voices[i]:
                ident = voices[i].contents.identifier.decode()
                group, _, base = ident.rpartition("/")
                out.append((base.lower(), group or base.lower()))
                i += 1
            return sorted(set(out))


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """This process's espeak, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE


# ----------------------------------------------------------------------------- phonemes


def _split_stress(token: str) -> tuple[str, str]:
    n = len(token) - len(token.lstrip(STRESS))
    return token[:n], token[n:]


@functools.lru_cache(maxsize=None)
def _supported(voice: str, phoneme: str) -> bool:
    """True when `voice`'s table parses `phoneme`: espeak drops the rest of a word at a phoneme
    its table lacks, so the sentinel after it in the same word is uttered only if it parsed."""
    spoken = engine().phonemes_spoken(voice, f"{phoneme}m")
    return bool(spoken) and spoken[-1].lstrip(STRESS) == "m"


def map_phoneme(voice: str, phoneme: str) -> tuple[str | None, bool]:
    """(phoneme sequence `voice` says for an English phoneme or None, whether it is a substitute)."""
    if phoneme in SILENT:
        return "", False
    candidates = [phoneme] + PHONEME_FALLBACK.get(phoneme, []) + [re.sub(r"[^A-Za-z@&]", "", phoneme)]
    for i, cand in enumerate(c for c in candidates if c):
        if all(_supported(voice, p) for p in cand.split()):
            return cand, i > 0
    return None, True


def speak_form(voice: str, english) -> tuple[str, int, int]:
    """English phoneme words -> ("[[...]]" for `voice`, phonemes substituted, phonemes missing)."""
    words, subs, missing = [], 0, 0
    for word in english:
        out = []
        for token in word:
            stress, name = _split_stress(token)
            mapped, substituted = map_phoneme(voice, name)
            if mapped is None:
                missing += 1
                continue
            subs += substituted
            if mapped:
                out.append(stress + mapped.replace(" ", ""))
        if out:
            words.append("".join(out))
    return "[[" + " ".join(words) + "]]", subs, missing


def phoneme_count(english) -> int:
    return sum(1 for w in english for t in w if _split_stress(t)[1] not in SILENT)


# ----------------------------------------------------------------------------- pool


def voice_family(voice: str, group: str, variant: str) -> str:
    """The family a speaker belongs to (module docstring)."""
    if variant in klatt_variants():
        return "klatt"
    if voice in ENGLISH_FAMILIES:
        return ENGLISH_FAMILIES[voice]
    return GROUP_FAMILIES.get(group, "other")


@functools.lru_cache(maxsize=1)
def klatt_variants() -> frozenset[str]:
    """Variants that switch espeak to its Klatt formant synthesiser (a `klatt N` line)."""
    folder = engine().data_path / "voices" / "!v"
    return frozenset(p.name for p in folder.iterdir()
                     if re.search(r"^\s*klatt\s+\d", p.read_text(errors="replace"), re.M))


def all_variants() -> list[str]:
    folder = engine().data_path / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in EXCLUDED_VARIANTS)


def all_voices() -> dict[str, str]:
    """{voice: language group} of every voice espeak ships that is an accent someone speaks with."""
    return {v: g for v, g in engine().list_voices()
            if v not in EXCLUDED_VOICES and g not in EXCLUDED_GROUPS}


@functools.lru_cache(maxsize=4096)
def english_words(text: str) -> tuple[tuple[str, ...], ...]:
    """`Espeak.english_phonemes`, cached: the same texts are mapped for many speakers."""
    return tuple(tuple(w) for w in engine().english_phonemes(text))


@functools.lru_cache(maxsize=1024)
def voice_mapping(voice: str, phrase: str) -> str | None:
    """The `[[...]]` form of `phrase` for a non-English voice, or None when the voice cannot say
    it: a phoneme missing, or more than half of them substituted."""
    english = english_words(phrase)
    form, subs, missing = speak_form(voice, english)
    if missing or subs > phoneme_count(english) / 2:
        return None
    return form


def speaker_pool(phrase: str, voices: tuple[str, ...], variants: tuple[str, ...]) -> list[Speaker]:
    """Every usable speaker, sorted by id. Empty `voices` / `variants` = all that espeak ships."""
    known = engine().list_voices()
    groups = dict(known)
    chosen = list(voices) or sorted(all_voices())
    for v in chosen:
        if v not in groups and engine().lib.espeak_SetVoiceByName(v.encode()) != 0:
            raise SynthError(f"data.synth.voices: espeak-ng has no voice {v!r}")
    folder = engine().data_path / "voices" / "!v"
    for var in variants:
        if not (folder / var).is_file():
            raise SynthError(f"data.synth.variants: espeak-ng has no variant {var!r}")
    usable = [v for v in chosen if v in ENGLISH_FAMILIES or voice_mapping(v, phrase) is not None]
    pool = [Speaker(f"{v}+{var}", v, var, voice_family(v, groups.get(v, ""), var), v in ENGLISH_FAMILIES,
                    voice_family(v, groups.get(v, ""), ""))
            for v in usable for var in (list(variants) or all_variants())]
    return sorted(pool, key=lambda s: s.id)


def speak(speaker: Speaker, text: str, phonemes=None) -> str:
    """What espeak reads for `text` by `speaker`: English voices read the text (or `phonemes`,
    English phoneme names per word, when given); other voices read the English phonemes
    mapped to their own table."""
    if speaker.english:
        return text if phonemes is None else "[[" + " ".join("".join(w) for w in phonemes) + "]]"
    english = phonemes if phonemes is not None else english_words(text)
    return speak_form(speaker.voice, english)[0]
