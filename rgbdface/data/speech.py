"""Speech-like synthetic audio for the talking studio clips (data/studio.py).

Not speech: a seeded source-filter toy that has what the motion stage can learn
from a synthetic clip, namely *when* the mouth should open. It is built as

1. a syllable plan: words of 1-4 syllables at 3-6 syllables per second, separated
   by pauses; each syllable is a raised-cosine amplitude bump (the envelope);
2. a voiced source: harmonics of a pitch contour f0(t) (speaker base pitch, slow
   random drift, declination over each phrase, a little jitter), tilted -6 dB/octave;
3. formant-like band emphasis: each syllable gets a vowel's first three formants;
   formant tracks glide between syllables and weight the harmonics near them;
4. short noise bursts at syllable onsets (consonant-like), and a faint noise floor.

Everything is drawn from one numpy Generator, so a seed gives the same waveform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgbdface.data.audio import SAMPLE_RATE
# first three formants (Hz) of five vowels, adult averages (Peterson & Barney style)
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]], np.float64)
FORMANT_WIDTHS = np.array([90.0, 120.0, 180.0])  # Hz, the width of each band's emphasis
FORMANT_GAINS = np.array([1.0, 0.6, 0.3])


@dataclass
class SpeechConfig:
    syllable_rate: tuple[float, float] = (3.0, 6.0)  # syllables per second
    word_syllables: tuple[int, int] = (1, 4)  # syllables per word (inclusive)
    pause: tuple[float, float] = (0.12, 0.45)  # seconds of silence between words
    pitch: tuple[float, float] = (95.0, 230.0)  # speaker base f0, Hz
    max_harmonic_hz: float = 5000.0  # harmonics above this are left out
    peak: float = 0.7  # waveform peak after normalisation


@dataclass
class SyntheticSpeech:
    """audio: [T] float32 in [-1, 1]; envelope: [T] float32 in [0, 1], the syllable amplitude
    (what the mouth follows); f0: [T] float32 Hz; sample_rate: Hz."""

    audio: np.ndarray
    envelope: np.ndarray
    f0: np.ndarray
    sample_rate: int

    def frame_envelope(self, fps: float) -> np.ndarray:
        """Mean envelope per video frame [F] (frame f covers samples [f sr / fps, (f + 1) sr / fps))."""
        per = self.sample_rate / fps
        frames = max(int(round(len(self.envelope) / per)), 1)
        edges = np.minimum(np.round(np.arange(frames + 1) * per).astype(int), len(self.envelope))
        return np.add.reduceat(self.envelope, edges[:-1]) / np.maximum(np.diff(edges), 1)


def _slow_noise(rng: np.random.Generator, n: int, sample_rate: int, hz: float) -> np.ndarray:
    """Smooth zero-mean noise of unit-ish amplitude that varies about `hz` times per second."""
    knots = max(int(np.ceil(n / sample_rate * hz)) + 2, 2)
    values = rng.standard_normal(knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values)


def _syllables(rng: np.random.Generator, seconds: float, cfg: SpeechConfig) -> list[tuple[float, float, float, int]]:
    """(start s, duration s, peak amplitude, vowel index) for each syllable, words separated by pauses."""
    out, t = [], float(rng.uniform(0.05, 0.25))
    rate = float(rng.uniform(*cfg.syllable_rate))
    while t < seconds:
        for _ in range(int(rng.integers(cfg.word_syllables[0], cfg.word_syllables[1] + 1))):
            dur = float(np.clip(rng.normal(1.0 / rate, 0.2 / rate), 0.6 / rate, 1.6 / rate))
            out.append((t, dur, float(rng.uniform(0.5, 1.0)), int(rng.integers(len(VOWELS)))))
            t += dur
        t += float(rng.uniform(*cfg.pause))
    return out


def synthesize(seconds: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE, cfg: SpeechConfig | None = None) -> SyntheticSpeech:
    """`seconds` of speech-like audio (see the module doc); exactly round(seconds * sample_rate) samples."""
    cfg = cfg or SpeechConfig()
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate

    # 1. Syllable envelope: a sin^2 bump per syllable (peaks do not overlap: syllables follow each other).
    plan = _syllables(rng, seconds, cfg)
    envelope = np.zeros(n)
    onsets = np.zeros(n)
    formants = np.zeros((len(plan), 3))
    centres = np.zeros(len(plan))
    for i, (start, dur, amp, vowel) in enumerate(plan):
        a, b = int(start * sample_rate), min(int((start + dur) * sample_rate), n)
        if a >= n:
            break
        x = (np.arange(a, b) - a) / max(dur * sample_rate, 1)
        envelope[a:b] = np.maximum(envelope[a:b], amp * np.sin(np.pi * x) ** 2)
        burst = min(a + int(0.03 * sample_rate), n)
        onsets[a:burst] = np.exp(-np.arange(burst - a) / (0.008 * sample_rate)) * amp
        formants[i] = VOWELS[vowel] * rng.uniform(0.92, 1.08)
        centres[i] = start + dur / 2
    used = centres > 0
    formants, centres = formants[used], centres[used]

    # 2. Pitch contour: base pitch, slow drift (~2 Hz), declination within each phrase, jitter.
    base = float(rng.uniform(*cfg.pitch))
    phrase = (t % 1.8) / 1.8
    f0 = base * (1.0 + 0.08 * _slow_noise(rng, n, sample_rate, 2.0) - 0.1 * phrase + 0.005 * rng.standard_normal(n))
    f0 = np.clip(f0, 60.0, 400.0)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate  # [T]

    # 3. Harmonics weighted by formant bands that glide between the syllables' vowels.
    if len(centres) == 0:
        tracks = np.tile(VOWELS[0], (n, 1))
    else:
        tracks = np.stack([np.interp(t, centres, formants[:, k]) for k in range(3)], 1)  # [T, 3]
    voiced = np.zeros(n)
    for k in range(1, int(cfg.max_harmonic_hz / 60.0) + 1):
        fk = k * f0
        if fk.min() > cfg.max_harmonic_hz:
            break
        bands = FORMANT_GAINS * np.exp(-0.5 * ((fk[:, None] - tracks) / FORMANT_WIDTHS) ** 2)  # [T, 3]
        gain = (0.15 + bands.sum(1)) / k * (fk < cfg.max_harmonic_hz)
        voiced += gain * np.sin(k * phase)

    # level the voiced source (vowels differ in loudness here only through the envelope)
    win = int(0.02 * sample_rate)
    power = np.convolve(voiced**2, np.ones(win) / win, mode="same")
    voiced /= np.sqrt(power + 1e-6 * power.max())

    # 4. Consonant-like onset bursts (high-passed noise) and a faint floor; normalise the peak.
    noise = np.diff(rng.standard_normal(n + 1))
    audio = voiced * envelope + 0.6 * noise * onsets + 1e-3 * rng.standard_normal(n)
    audio *= cfg.peak / max(np.abs(audio).max(), 1e-9)
    return SyntheticSpeech(audio.astype(np.float32), envelope.astype(np.float32), f0.astype(np.float32), sample_rate)
