"""Streaming detection on synthetic recordings with 'wakewords' (tone bursts) at known times.

The scorer is deterministic: the fraction of a full burst's energy inside the window, so the
time a detector must fire and the triggers it must give are known by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from raykd import detect as D
from raykd import evaluate as E
from raykd.config.schema import EvalConfig, FeatureConfig
from raykd.data.dataset import WaveformSet

SR = 1000  # a low rate keeps 20-minute recordings cheap; the code is rate-agnostic
CLIP, HOP = 1000, 100  # 1.0 s windows every 0.1 s
BURST_S = 0.4
BURST_ENERGY = 0.5 * BURST_S * SR  # sin^2 averages 1/2 at amplitude 1
FEATURES = FeatureConfig(sample_rate=SR, clip_seconds=CLIP / SR)
EV = EvalConfig(hop_ms=1000 * HOP / SR, refractory_s=1.0, target_fa_per_hour=0.5)


def energy_scorer(windows: torch.Tensor) -> torch.Tensor:
    """(B, CLIP) -> (B,) fraction of a full-amplitude burst's energy in the window, at most 1."""
    assert windows.shape[1] == CLIP
    return ((windows ** 2).sum(1) / BURST_ENERGY).clamp(max=1.0)


def recording(seconds: float, bursts: list[tuple[float, float]], seed: int = 0) -> torch.Tensor:
    """Low noise with tone bursts [(start_s, amplitude)]."""
    g = torch.Generator().manual_seed(seed)
    wave = 0.003 * torch.randn(int(seconds * SR), generator=g)
    n = int(BURST_S * SR)
    tone = torch.sin(2 * math.pi * 50 * torch.arange(n) / SR)
    for start, amp in bursts:
        i = int(round(start * SR))
        piece = wave[i:i + n]
        piece += amp * tone[:piece.shape[0]]  # a burst may run off the end
    return wave


def test_each_wakeword_fires_once_at_the_right_time():
    starts = [15.0 + 28.7 * k for k in range(20)]  # 10 minutes, not on the hop grid
    wave = recording(600, [(s, 1.0) for s in starts])
    scores = D.stream_scores(energy_scorer, wave, CLIP, HOP, batch=256)
    thr = 0.9
    times = D.trigger_times(scores, thr, HOP / SR, CLIP / SR, refractory_s=1.0)
    assert len(times) == len(starts)
    for t, s in zip(times, starts):
        # fires when the window's end has heard `thr` of the burst
        assert abs(t - (s + thr * BURST_S)) <= HOP / SR + 1e-6, (t, s)
    # Without the refractory period one utterance fires in several consecutive windows.
    assert len(D.trigger_times(scores, thr, HOP / SR, CLIP / SR, refractory_s=0.0)) > 2 * len(starts)


def test_fa_per_hour_on_a_negative_stream_is_triggers_over_hours():
    # 20 minutes: 12 loud near misses (peak score 0.81 >= 0.5), 9 quiet ones (0.09 < 0.5)
    loud = [(30.0 + 95.0 * k, 0.9) for k in range(12)]
    quiet = [(60.0 + 110.0 * k, 0.3) for k in range(9)]
    stream = recording(1200.5, loud + quiet, seed=1)
    clips = torch.stack([recording(1.0, [(0.3, 1.0)], seed=2 + i) for i in range(4)] +
                        [recording(1.0, [], seed=9 + i) for i in range(6)])
    labels = torch.tensor([1] * 4 + [0] * 6)
    data = WaveformSet(clips, labels, ["s"] * 10, [""] * 10, sample_rate=SR, streams=[stream])
    out = E.evaluate_detector(energy_scorer, data, FEATURES, EV, threshold=0.5)
    hours = (1200.5 + 6 * 1.0) / 3600
    assert out[E.NEGATIVE_HOURS] == pytest.approx(hours)
    assert out[E.FA_PER_HOUR] == pytest.approx(12 / hours)
    assert out[E.FRR] == 0.0 and out[E.N_POS] == 4
    # The operating point for 0.5 FA/h on 0.335 h: no trigger at all, so just above 0.81.
    assert out[E.FA_PER_HOUR_AT_TARGET] == 0.0 and out[E.TARGET_MET]
    assert 0.81 < out[E.THRESHOLD_AT_TARGET] < 0.82 and out[E.FRR_AT_TARGET] == 0.0


def test_count_triggers_matches_trigger_times():
    g = torch.Generator().manual_seed(3)
    # a smooth random score track with runs above and below every threshold
    scores = torch.sigmoid(torch.cumsum(torch.randn(5000, generator=g), 0) * 0.05 +
                           torch.randn(5000, generator=g))
    thresholds = torch.tensor([0.05, 0.3, 0.5, 0.62, 0.8, 0.95, 0.999])
    for refractory_s in (0.0, 0.05, 0.3, 1.0, 2.5):
        r = D.refractory_hops(refractory_s, 0.1)
        got = D.count_triggers(scores, thresholds, r)
        want = [len(D.trigger_times(scores, float(t), 0.1, 1.0, refractory_s)) for t in thresholds]
        assert got.tolist() == want, refractory_s
        assert len(set(want)) > 3  # the thresholds really differ


def test_operating_point_meets_target_with_the_lowest_frr():
    neg = [(20.0 + 20.3 * k, 0.5 + 0.03 * k) for k in range(15)]  # peaks 0.25 .. 0.95
    stream = recording(320, neg, seed=4)
    pos_clips = torch.stack([recording(1.0, [(0.3, a)], seed=k)
                             for k, a in enumerate(torch.linspace(0.6, 1.0, 15).tolist())])
    pos = D.clip_scores(energy_scorer, pos_clips, CLIP, HOP)
    negs = [D.stream_scores(energy_scorer, stream, CLIP, HOP)]
    hours = 320 / 3600
    r = D.refractory_hops(1.0, 0.1)
    det = D.det_curve(pos, negs, hours, r)
    for target in (12.0, 50.0, 100.0):
        op = D.operating_point(det, target)
        assert op.met and op.fa_per_hour <= target
        # brute force over every threshold where FRR or FA/h changes
        # (below 0.2 every near miss fires: 15 triggers = 169 FA/h, above any target here)
        high = negs[0][negs[0] >= 0.2]
        cands = torch.cat([pos, torch.nextafter(high, torch.tensor(2.0))])
        best = min(float((pos < t).float().mean()) for t in cands.tolist()
                   if len(D.trigger_times(negs[0], t, 0.1, 1.0, 1.0)) / hours <= target)
        assert op.frr == pytest.approx(best), target
    assert D.operating_point(det, 100.0).frr < D.operating_point(det, 12.0).frr  # a real trade-off
    summary = D.det_summary(det)
    assert 0.0 <= summary <= 1.0
    none = D.operating_point([(0.5, 0.1, 30.0), (0.7, 0.4, 20.0)], 1.0)
    assert not none.met and none.threshold == 0.7


def test_a_twenty_minute_stream_is_scored_whole():
    n = 20 * 60 * SR + 37  # not a whole number of hops
    wave = recording(n / SR, [(n / SR - 0.45, 1.0)], seed=5)  # a burst in the last 0.45 s
    scores = D.stream_scores(energy_scorer, wave, CLIP, HOP, batch=300)
    starts = D.window_starts(n, CLIP, HOP)
    assert scores.shape[0] == starts.shape[0] == 1 + math.ceil((n - CLIP) / HOP)
    assert starts[-1] + CLIP >= n > starts[-1]  # the tail is covered, zero-padded
    assert scores[-1] > 0.95  # ... so the burst at the very end is heard
    assert D.stream_scores(energy_scorer, wave[:300], CLIP, HOP).shape == (1,)  # shorter than a clip


def late_scorer(windows: torch.Tensor) -> torch.Tensor:
    """Energy in the window's last half only: a detector that fires once a word has ended."""
    return energy_scorer(torch.cat([torch.zeros_like(windows[:, :CLIP // 2]), windows[:, CLIP // 2:]], 1))


def test_clip_scores_see_a_wakeword_at_the_clip_edge():
    clips = torch.stack([recording(1.0, [(0.55, 1.0)], seed=6), recording(1.0, [(0.05, 1.0)], seed=7)])
    for scorer in (energy_scorer, late_scorer):
        assert (D.clip_scores(scorer, clips, CLIP, HOP) >= scorer(clips) - 1e-6).all()  # a window = the clip
    plain, streamed = late_scorer(clips), D.clip_scores(late_scorer, clips, CLIP, HOP)
    # an early burst is heard in a window that starts in the padding before the clip
    assert plain[1] < 0.05 and streamed[1] > 0.95 and streamed[0] > 0.95


class CentrelessLogMel(torch.nn.Module):
    """LogMel with an uncentred STFT (the other front end the shared-frames path knows)."""

    def __init__(self, fs: FeatureConfig):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(fs.sample_rate, n_fft=400, hop_length=160,
                                                        n_mels=fs.n_mels, center=False)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(waves) + 1e-6)


@pytest.mark.parametrize("front", ["logmel", "uncentred"])
def test_torch_scorer_shared_frames_equal_window_by_window(front):
    from raykd.data.features import LogMel
    from raykd.models.student import TinyConv

    fs = FeatureConfig()
    torch.manual_seed(0)
    logmel = LogMel(fs) if front == "logmel" else CentrelessLogMel(fs)
    model = TinyConv(fs.n_mels, width=16, blocks=2)
    scorer = D.torch_scorer(model, logmel, "cpu")
    assert not model.training
    hop = 1600
    assert scorer._frame_plan(fs.clip_samples, hop) is not None  # the shared-frames path runs
    g = torch.Generator().manual_seed(1)
    wave = torch.randn(int(3.3 * fs.sample_rate), generator=g) * 0.1
    wave[8000:20000] += torch.sin(torch.arange(12000) * 0.3)  # something for the model to see
    got = D.stream_scores(scorer, wave, fs.clip_samples, hop, batch=4)
    starts = D.window_starts(wave.shape[0], fs.clip_samples, hop)
    padded = torch.nn.functional.pad(wave, (0, int(starts[-1]) + fs.clip_samples - wave.shape[0]))
    windows = torch.stack([padded[s:s + fs.clip_samples] for s in starts.tolist()])
    with torch.no_grad():
        want = model(logmel(windows))[0].softmax(-1)[:, 1]
    assert want.std() > 1e-3  # the windows really score differently
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    clips = torch.stack([wave[:fs.clip_samples], wave[9000:9000 + fs.clip_samples]])
    generic = D.clip_scores(lambda w: scorer(w), clips, fs.clip_samples, hop)  # no shared frames
    torch.testing.assert_close(D.clip_scores(scorer, clips, fs.clip_samples, hop), generic, atol=1e-5, rtol=1e-4)


def test_every_reported_number_is_in_the_metric_table():
    from raykd import metrics as M

    clips = torch.stack([recording(1.0, [(0.3, 1.0)], seed=20), recording(1.0, [], seed=21)])
    data = WaveformSet(clips, torch.tensor([1, 0]), ["a", "b"], ["", ""], sample_rate=SR,
                       streams=[recording(60, [(20.0, 0.8)], seed=22)])
    row = E.as_metrics(E.evaluate_detector(energy_scorer, data, FEATURES, EV, threshold=0.5))
    assert set(row) <= set(M.METRICS) and M.VAL_FRR_AT_TARGET in row
    assert M.VAL_FRR_AT_TARGET in M.SEARCHABLE and M.VAL_THRESHOLD_AT_TARGET not in M.SEARCHABLE
    assert row[M.VAL_NEGATIVE_HOURS] == pytest.approx(61 / 3600)
    assert row[M.VAL_FA_PER_HOUR] == pytest.approx(1 / (61 / 3600))  # the 0.64 near miss, once
