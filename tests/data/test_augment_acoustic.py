"""Acoustic augmentation: each effect deterministic per (seed, clip, view), and doing what its
configured range says (measured on the output: decay time, duration, frequency, band, SNR)."""

from __future__ import annotations

import math

import pytest
import torch

from raykd.config import AugmentConfig, ConfigError, config_from_dict
from raykd.data import effects, rooms
from raykd.data.augment import augment_waveforms
from raykd.distill.cache import augment_views, train_babble_bank

SR, S = 16000, 24000
OFF = dict(noise_prob=0.0, gain_db=(0.0, 0.0), time_shift_ms=0.0, speed_prob=0.0, pitch_prob=0.0,
           reverb_prob=0.0, babble_prob=0.0, bandlimit_prob=0.0, mulaw_prob=0.0, rir_bank_size=4)
EFFECTS = {
    "speed": dict(speed_prob=1.0), "pitch": dict(pitch_prob=1.0), "reverb": dict(reverb_prob=1.0),
    "babble": dict(babble_prob=1.0), "bandlimit": dict(bandlimit_prob=1.0), "mulaw": dict(mulaw_prob=1.0),
}


def only(**kw) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **kw})


def cfg_with(**kw):
    return config_from_dict({"teachers": {}, "distillation": {"enabled": False}, "seed": 3,
                             "data": {"augment": {**OFF, **kw}}})


def tone(freq: float, seconds: float = S / SR, level: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return level * torch.sin(2 * math.pi * freq * t)


def speechlike(n: int, seed: int = 0) -> torch.Tensor:
    """(n, S) syllable-like bursts (modulated tones with pauses): 'speech' to effects.is_speech."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(S) / SR
    f0 = 150 + 300 * torch.rand(n, 1, generator=g)
    rate = 3 + 3 * torch.rand(n, 1, generator=g)
    env = torch.sin(2 * math.pi * rate * t).clamp_min(0) * ((t > 0.2) & (t < 1.3))
    return 0.2 * env * torch.sin(2 * math.pi * f0 * t)


def peak_hz(x: torch.Tensor) -> float:
    """Frequency of the spectral peak, refined by a parabola through the three top bins."""
    n = 8 * x.shape[-1]
    mag = torch.fft.rfft(x * torch.hann_window(x.shape[-1]), n=n).abs()
    k = int(mag.argmax())
    a, b, c = (float(v) for v in mag[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / n


@pytest.mark.parametrize("name", list(EFFECTS))
def test_each_effect_is_deterministic_per_seed_clip_and_view(name):
    cfg = cfg_with(**EFFECTS[name])
    waves = speechlike(6)
    labels = torch.tensor([1, 0, 0, 1, 0, 0])
    bank = train_babble_bank(cfg, waves, labels)
    idx = torch.arange(6)
    v0, v1 = torch.zeros_like(idx), torch.ones_like(idx)
    a = augment_views(waves, idx, v0, cfg, None, bank)
    b = augment_views(waves, idx, v0, cfg, None, bank)
    assert a.numpy().tobytes() == b.numpy().tobytes()  # same bytes twice
    assert not torch.equal(a, waves)  # the effect did something
    if name != "mulaw":  # mu-law has no random parameter: the same on every view
        # discrete choices (a factor in steps of 0.01, one of 4 rooms) may coincide for a clip
        other = augment_views(waves, idx, v1, cfg, None, bank)
        assert sum(not torch.equal(a[j], other[j]) for j in range(6)) >= 5
    # a clip's view does not depend on the batch it is in
    alone = augment_views(waves[2:3], idx[2:3], v0[2:3], cfg, None, bank)
    assert torch.equal(alone[0], a[2])
    # another seed, other views
    c = augment_views(waves, idx, v0, cfg_with(**EFFECTS[name]).model_copy(update={"seed": 4}), None, bank)
    assert name == "mulaw" or not torch.equal(a, c)


@pytest.mark.parametrize("rt60", [0.3, 0.7])
def test_reverberation_has_the_configured_decay_time(rt60):
    aug = only(reverb_prob=1.0, rt60_s=(rt60, rt60), drr_db=(-3.0, -3.0))
    bank = rooms.rir_bank(None, 4, aug.rt60_s, aug.drr_db, SR, 0)
    impulse = torch.zeros(8, S)
    impulse[:, 0] = 1.0
    assert rooms.decay_time(impulse[0], SR) == 0.0  # dry: no decay at all
    wet = augment_waveforms(impulse, aug, SR, torch.Generator().manual_seed(1), rir_bank=bank)
    for row in wet:
        assert rooms.decay_time(row, SR) == pytest.approx(rt60, rel=0.2)
        assert rooms.direct_to_reverberant_db(row, SR) == pytest.approx(-3.0, abs=0.5)
        assert int(row.abs().argmax()) == 0  # the direct path stays where the sound was


def test_rir_bank_spans_the_rt60_and_drr_ranges_and_is_seeded():
    bank = rooms.rir_bank(None, 12, (0.2, 0.8), (0.0, 10.0), SR, 5)
    assert torch.equal(bank, rooms.rir_bank.__wrapped__(None, 12, (0.2, 0.8), (0.0, 10.0), SR, 5))
    assert not torch.equal(bank, rooms.rir_bank.__wrapped__(None, 12, (0.2, 0.8), (0.0, 10.0), SR, 6))
    drr = torch.tensor([rooms.direct_to_reverberant_db(h, SR) for h in bank])
    assert drr.min() >= -0.1 and drr.max() <= 10.1 and drr.max() - drr.min() > 3
    # the tail lasts 1.1 x RT60: bank rows' lengths span the RT60 range
    lengths = torch.tensor([int(torch.nonzero(h).max()) + 1 for h in bank]) / SR
    assert lengths.min() >= 1.1 * 0.2 - 0.01 and lengths.max() <= 1.1 * 0.8 + 0.01


def test_rir_dir_is_used_as_given(tmp_path):
    import numpy as np
    import soundfile as sf

    h = np.zeros(4000, dtype=np.float32)
    h[100], h[900] = 0.5, 0.25  # pre-delay of 100 samples, one echo 800 samples later
    sf.write(tmp_path / "room.wav", h, SR)
    bank = rooms.rir_bank(tmp_path, 64, (0.2, 0.8), (-3.0, 12.0), SR, 0)
    assert bank.shape[0] == 1 and bank[0, 0] == 1.0 and bank[0, 800] == pytest.approx(0.5, abs=1e-3)
    dry = torch.zeros(1, S)
    dry[0, 1000] = 1.0
    wet = augment_waveforms(dry, only(reverb_prob=1.0), SR, torch.Generator(), rir_bank=bank)
    ratio = wet[0, 1800] / wet[0, 1000]
    assert ratio == pytest.approx(0.5, abs=1e-3)
    from raykd.data.audio import AudioError

    with pytest.raises(AudioError, match="data.augment.rir_dir"):
        rooms.rir_bank(tmp_path / "missing", 64, (0.2, 0.8), (-3.0, 12.0), SR, 0)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_duration_by_the_factor(factor):
    burst = torch.zeros(S)
    burst[4000:16000] = tone(300)[:12000]
    out = effects.speed_perturb(burst, factor)
    assert out.shape[-1] == pytest.approx(S / factor, abs=1)  # before crop/pad
    loud = torch.nonzero(out.abs() > 0.05).flatten()
    assert (int(loud[-1]) - int(loud[0])) == pytest.approx(12000 / factor, rel=0.01)
    # through the chain: cropped/padded back to S, and the tone is `factor` times higher
    aug = only(speed_prob=1.0, speed_range=(factor, factor))
    chained = augment_waveforms(tone(300)[None], aug, SR, torch.Generator())
    assert chained.shape == (1, S)
    assert peak_hz(chained[0, 4000:20000]) == pytest.approx(300 * factor, rel=0.005)


def test_speed_factors_stay_in_range():
    aug = only(speed_prob=1.0, speed_range=(0.9, 1.1))
    freqs = [peak_hz(augment_waveforms(tone(400)[None], aug, SR, torch.Generator().manual_seed(k))[0, 4000:20000])
             for k in range(12)]
    assert min(freqs) >= 400 * 0.9 - 2 and max(freqs) <= 400 * 1.1 + 2 and max(freqs) - min(freqs) > 20


@pytest.mark.parametrize("semitones", [-2.0, 1.5])
def test_pitch_shift_moves_a_tone_by_the_semitones(semitones):
    aug = only(pitch_prob=1.0, pitch_semitones=(semitones, semitones))
    out = augment_waveforms(tone(440)[None], aug, SR, torch.Generator())[0]
    assert out.shape == (S,)  # duration kept
    moved = 12 * math.log2(peak_hz(out[2000:22000]) / 440)
    assert moved == pytest.approx(semitones, abs=0.1)


def test_band_limiting_removes_energy_outside_the_band():
    aug = only(bandlimit_prob=1.0, bandlimit_low_hz=(200.0, 400.0), bandlimit_high_hz=(3000.0, 4000.0))
    noise = torch.randn(16, S, generator=torch.Generator().manual_seed(0)) * 0.1
    out = augment_waveforms(noise, aug, SR, torch.Generator().manual_seed(2))
    power = torch.fft.rfft(out).abs().pow(2)
    freqs = torch.fft.rfftfreq(S, 1 / SR)
    assert power[:, (freqs < 200) | (freqs > 4000)].sum() < 1e-6 * power.sum()
    for p in power:  # each clip's band edges lie inside the configured ranges, and vary
        inside = freqs[p > 1e-3 * p.max()]
        assert 200 - 1 <= float(inside.min()) <= 400 + 1 and 3000 - 1 <= float(inside.max()) <= 4000 + 1
    edges = {round(float(freqs[p > 1e-3 * p.max()].min())) for p in power}
    assert len(edges) > 8


def test_mu_law_is_an_8_bit_codec():
    x = tone(500)[None]
    out = augment_waveforms(x, only(mulaw_prob=1.0), SR, torch.Generator())
    assert len(torch.unique(out)) <= 256 and not torch.equal(out, x)
    snr = 10 * torch.log10(x.pow(2).mean() / (out - x).pow(2).mean())
    assert 30 < float(snr) < 45  # companded 8-bit: 35-38 dB, far from lossless and from broken


def test_babble_bank_holds_negative_speech_only():
    from raykd.data.augment import COLOURS, coloured_noise

    speech = speechlike(10)
    # white, pink, brown (its slow wander must not pass for syllables), brown: not speech
    alpha = torch.tensor([COLOURS[c] for c in ("white", "pink", "brown", "brown")])
    noise = 0.1 * coloured_noise(alpha, S, torch.Generator().manual_seed(1))
    waves = torch.cat([speech, noise])
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    bank = effects.babble_bank(waves, labels, 100, seed=0, sample_rate=SR)
    unit = waves / waves.pow(2).mean(-1, keepdim=True).sqrt()
    match = [int(torch.nonzero((unit - row).abs().amax(-1) < 1e-6).flatten()[0]) for row in bank]
    assert sorted(match) == [4, 5, 6, 7, 8, 9]  # every negative speech clip, no positive, no noise
    small = effects.babble_bank(waves, labels, 3, seed=0, sample_rate=SR)
    assert small.shape[0] == 3 and torch.equal(small, effects.babble_bank(waves, labels, 3, 0, SR))
    assert effects.babble_bank(waves, torch.ones(14, dtype=torch.long), 100, 0, SR) is None


def test_babble_bank_of_a_synthesised_split_is_its_negative_speech(synth_cfg):
    """Real espeak-ng clips: the bank holds exactly the train split's negative speech clips
    (near misses, other speech), not its positives, silence or noise (manifest `kind`)."""
    import csv

    from raykd.data.dataset import load_split

    train = load_split(synth_cfg, "train")
    with open(synth_cfg.data.root / "manifest.csv") as f:
        kind = {row["path"]: row["kind"] for row in csv.DictReader(f)}
    kinds = [next(k for p, k in kind.items() if path.endswith(p)) for path in train.paths]
    bank = effects.babble_bank(train.waves, train.labels, 10_000, 0, SR)
    unit = train.waves / train.waves.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    used = sorted(int(torch.nonzero((unit - row).abs().amax(-1) < 1e-5).flatten()[0]) for row in bank)
    expected = [i for i, k in enumerate(kinds) if int(train.labels[i]) == 0 and k != "nonspeech"]
    assert used == expected and len(used) >= 4 and "positive" not in {kinds[i] for i in used}


def test_babble_is_mixed_at_the_configured_snr_from_the_bank():
    waves = speechlike(12)
    labels = torch.tensor([0] * 6 + [1] * 6)
    aug = only(babble_prob=1.0, babble_snr_db=(10.0, 20.0), babble_talkers=(2, 3))
    bank = effects.babble_bank(waves, labels, 256, 0, SR)
    clean = tone(700)[None].repeat(16, 1)
    out = augment_waveforms(clean, aug, SR, torch.Generator().manual_seed(3), babble_bank=bank)
    added = out - clean
    snr = 10 * torch.log10(clean.pow(2).mean(-1) / added.pow(2).mean(-1))
    assert snr.min() > 10 - 0.01 and snr.max() < 20 + 0.01 and snr.max() - snr.min() > 3


def test_cached_views_equal_live_views(tmp_path):
    """The cache build and LiveTargets make the same babble bank (negatives of the train split)
    and the same rooms, so the student hears identical views either way."""
    from raykd.data.dataset import WaveformSet
    from raykd.distill.cache import TeacherCache, build_cache
    from raykd.distill.targets import CachedTargets, LiveTargets

    cfg = cfg_with(**{k: 0.5 for k in ("speed_prob", "pitch_prob", "reverb_prob", "babble_prob",
                                         "bandlimit_prob", "mulaw_prob", "noise_prob")}, views=3)
    cfg = cfg.model_copy(update={"cache_dir": tmp_path})
    waves = speechlike(10, seed=4)
    labels = torch.tensor([1, 0] * 5)
    train = WaveformSet(waves, labels, ["s"] * 10, [f"c{i}" for i in range(10)])
    root = build_cache(cfg, train, {}, "k", torch.device("cpu"), None)
    cached = CachedTargets(TeacherCache.load(root), waves)
    live = LiveTargets(cfg, waves, {}, labels)
    idx = torch.tensor([0, 3, 4, 9, 7])
    for v in range(3):
        views = torch.full_like(idx, v)
        a, _ = cached.batch(idx, views, {}, torch.device("cpu"))
        b, _ = live.batch(idx, views, {}, torch.device("cpu"))
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="babble_prob"):
        LiveTargets(cfg, waves, {})  # no labels: it could not make the cache's babble


@pytest.mark.parametrize("key, value", [("speed_range", [1.2, 0.9]), ("rt60_s", [0.0, 0.5]),
                                        ("babble_talkers", [4, 2]), ("reverb_prob", 1.5),
                                        ("pitch_semitones", [3, -3]), ("bandlimit_high_hz", [300, 250])])
def test_bad_ranges_name_their_key(key, value):
    with pytest.raises(ConfigError, match=f"data.augment.{key}"):
        config_from_dict({"data": {"augment": {key: value}}})
    with pytest.raises(ConfigError, match="bandlimit_low_hz"):
        config_from_dict({"data": {"augment": {"bandlimit_low_hz": [300, 3500]}}})


def test_slowed_down_clip_keeps_a_word_near_its_edge():
    """The crop back to the clip keeps the loudest window, not the centre: a word ending near the
    clip's end stays whole (a centre crop would cut ~0.08 s of it at factor 0.9)."""
    clip = torch.zeros(1, S)
    clip[0, 14000:23500] = tone(300)[:9500]
    out = augment_waveforms(clip, only(speed_prob=1.0, speed_range=(0.9, 0.9)), SR, torch.Generator())
    slowed = effects.speed_perturb(clip[0], 0.9)
    assert out.shape == (1, S)
    assert float(out.pow(2).sum()) == pytest.approx(float(slowed.pow(2).sum()), rel=1e-3)
    centre = slowed[(slowed.shape[-1] - S) // 2:][:S]
    assert float(centre.pow(2).sum()) < 0.95 * float(slowed.pow(2).sum())  # what a centre crop loses


def test_cache_key_covers_the_acoustic_keys():
    from raykd.distill.cache import cache_key

    base = cfg_with()
    keys = {cache_key(c, {}, "data") for c in (
        base, cfg_with(reverb_prob=0.5), cfg_with(rt60_s=(0.3, 0.9)), cfg_with(babble_talkers=(2, 4)),
        cfg_with(speed_range=(0.95, 1.05)), cfg_with(rir_bank_size=8))}
    assert len(keys) == 6 and cache_key(cfg_with(), {}, "data") == cache_key(base, {}, "data")
