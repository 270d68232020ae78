"""The synthetic task suite: tiny HEAR-format tasks generated in numpy, for tests.

Five tasks, tens of clips each, built in about a second with no system packages.  Together they cover
every split mode (trainvaltest, presplit_kfold, new_split_kfold), both embedding types (scene, event),
both prediction types (multiclass, multilabel) and both clip-length modes (fixed and
``sample_duration: null``).  Classes differ in pitch, noise colour or spectral shape, so a linear probe on
log-mel features beats chance clearly; tests downstream rely on that.

    syn_pitch    scene  multiclass  trainvaltest     1.0 s   12 semitones, split by timbre  pitch_acc, chroma_acc
    syn_noise    scene  multiclass  presplit_kfold   null    white/pink/brown noise, 5 folds  top1_acc
    syn_mix      scene  multilabel  new_split_kfold  2.0 s   tone/noise/clicks present      mAP, d_prime, aucroc
    syn_events   event  multilabel  trainvaltest     4.0 s   beep/buzz/hiss with onsets     event_onset_200ms_fms, segment_1s_er
    syn_envelope scene  multiclass  trainvaltest     null    percussive/swelling/steady     top1_acc

Every random draw comes from a generator seeded by the task name, so a build is byte-identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from formats.taskdir import SAMPLE_RATE as SR
from formats.taskdir import TRAINVALTEST_SPLITS, TaskWriter, fold_names, is_complete

VERSION = "v1"


def task_rng(name: str) -> np.random.Generator:
    """A generator seeded by the task name only: the same task always draws the same numbers."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))


# ---------------------------------------------------------------- sound primitives
def _t(n: int) -> np.ndarray:
    return np.arange(n) / SR


def harmonic_tone(freq: float, n: int, amps: np.ndarray, phase_rng: np.random.Generator) -> np.ndarray:
    """A sum of harmonics 1..len(amps) of `freq` (those below Nyquist), random phases."""
    t = _t(n)
    out = np.zeros(n)
    for h, a in enumerate(amps, start=1):
        if h * freq < SR / 2 - 500:
            out += a * np.sin(2 * np.pi * h * freq * t + phase_rng.uniform(0, 2 * np.pi))
    return out


def coloured_noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """white (flat), pink (1/f power), brown (1/f^2 power), or 'high' (white above 3 kHz)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1] if n > 2 else 1.0
    if colour == "pink":
        spec /= np.sqrt(f)
    elif colour == "brown":
        spec /= f
    elif colour == "high":
        spec[f < 3000] = 0
    elif colour != "white":
        raise ValueError(colour)
    return np.fft.irfft(spec, n)


def normalise(x: np.ndarray, peak: float) -> np.ndarray:
    m = np.max(np.abs(x))
    return x * (peak / m) if m > 0 else x


def fade(x: np.ndarray, ms: float = 10.0) -> np.ndarray:
    """Short raised-cosine fades so clips do not click at their edges."""
    k = min(len(x) // 2, int(ms * SR / 1000))
    if k > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k))
        x = x.copy()
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


# ---------------------------------------------------------------- tasks
def _syn_pitch(out_root: Path) -> Path:
    name = "syn_pitch"
    rng = task_rng(name)
    pitches = list(range(57, 69))  # A3..G#4: contiguous semitones so chroma_acc's idx % 12 is the chroma
    # five timbres (harmonic amplitude profiles): the clip's "source"; split by timbre, never by clip
    timbres = [np.array(a) for a in ([1, .5, .33, .25, .2, .16], [1, 0, .33, 0, .2, 0, .14], [1, .8, .6, .4, .2],
                                      [.3, 1, .3, .5, .2, .3], [1, .2, .6, .1, .4, .1, .2])]
    split_of_timbre = ["train", "train", "train", "valid", "test"]
    meta = dict(task_name=name, version=VERSION, embedding_type="scene", prediction_type="multiclass",
                split_mode="trainvaltest", sample_duration=1.0, evaluation=["pitch_acc", "chroma_acc"],
                splits=TRAINVALTEST_SPLITS)
    n = SR
    with TaskWriter(out_root, meta, [str(p) for p in pitches]) as tw:
        for ti, amps in enumerate(timbres):
            for p in pitches:
                f0 = 440.0 * 2 ** ((p - 69) / 12) * 2 ** (rng.uniform(-0.15, 0.15) / 12)  # ±15 cents detune
                env = np.exp(-_t(n) * rng.uniform(0.5, 3.0))
                x = harmonic_tone(f0, n, amps, rng) * env + 0.01 * rng.standard_normal(n)
                tw.add(split_of_timbre[ti], f"t{ti}_{p}.wav", fade(normalise(x, rng.uniform(0.3, 0.8))), [str(p)])
    return tw.path


def _syn_noise(out_root: Path) -> Path:
    name = "syn_noise"
    rng = task_rng(name)
    colours = ["brown", "pink", "white"]
    folds = fold_names(5)
    meta = dict(task_name=name, version=VERSION, embedding_type="scene", prediction_type="multiclass",
                split_mode="presplit_kfold", nfolds=5, sample_duration=None, evaluation=["top1_acc"],
                splits=folds)
    with TaskWriter(out_root, meta, colours) as tw:
        for fi, fold in enumerate(folds):
            for c in colours:
                for k in range(3):
                    n = int(rng.uniform(0.4, 1.6) * SR)
                    x = fade(normalise(coloured_noise(c, n, rng), rng.uniform(0.2, 0.8)))
                    tw.add(fold, f"f{fi}_{c}_{k}.wav", x, [c])
    return tw.path


def _syn_mix(out_root: Path) -> Path:
    name = "syn_mix"
    rng = task_rng(name)
    labels = ["clicks", "noise", "tone"]
    folds = fold_names(5)
    meta = dict(task_name=name, version=VERSION, embedding_type="scene", prediction_type="multilabel",
                split_mode="new_split_kfold", nfolds=5, sample_duration=2.0,
                evaluation=["mAP", "d_prime", "aucroc"], splits=folds)
    n = 2 * SR
    # every label present and absent in every fold (d_prime/aucroc need both per class): cycle through the
    # 7 non-empty label sets, then shuffle the assignment of clips to folds
    subsets = [[l for j, l in enumerate(labels) if m >> j & 1] for m in range(1, 8)]
    clips = [subsets[i % 7] for i in range(7 * 7)]
    with TaskWriter(out_root, meta, labels) as tw:
        for i, present in enumerate(clips):
            x = 0.003 * rng.standard_normal(n)
            if "tone" in present:
                x += 0.3 * harmonic_tone(rng.uniform(200, 800), n, np.array([1, .3, .1]), rng)
            if "noise" in present:
                x += 0.2 * normalise(coloured_noise("high", n, rng), 1.0)
            if "clicks" in present:
                idx = rng.choice(n - 200, size=int(rng.integers(8, 20)), replace=False)
                for j in idx:
                    x[j:j + 200] += 0.6 * np.exp(-np.arange(200) / 20.0) * np.sign(rng.standard_normal())
            fold = folds[i % 5]
            tw.add(fold, f"m{i:03d}.wav", fade(normalise(x, rng.uniform(0.3, 0.8))), present)
    return tw.path


EVENT_LABELS = ["beep", "buzz", "hiss"]


def _event_sound(label: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if label == "beep":
        x = harmonic_tone(rng.uniform(900, 1300), n, np.array([1.0]), rng)
    elif label == "buzz":
        x = harmonic_tone(rng.uniform(110, 160), n, 1.0 / np.arange(1, 30), rng)
    else:
        x = normalise(coloured_noise("high", n, rng), 1.0)
    return fade(normalise(x, 1.0), 15)


def _syn_events(out_root: Path) -> Path:
    name = "syn_events"
    rng = task_rng(name)
    meta = dict(task_name=name, version=VERSION, embedding_type="event", prediction_type="multilabel",
                split_mode="trainvaltest", sample_duration=4.0,
                evaluation=["event_onset_200ms_fms", "segment_1s_er"], splits=TRAINVALTEST_SPLITS,
                evaluation_params={"event_postprocessing_grid": {"median_filter_ms": [150],
                                                                 "min_duration": [100]}})
    n = 4 * SR
    counts = {"train": 24, "valid": 8, "test": 8}
    i = 0
    with TaskWriter(out_root, meta, EVENT_LABELS) as tw:
        for split in TRAINVALTEST_SPLITS:
            for _ in range(counts[split]):
                x = 0.005 * coloured_noise("pink", n, rng) / 0.05
                events = []
                for label in rng.permutation(EVENT_LABELS)[: int(rng.integers(1, 4))]:
                    dur = rng.uniform(0.3, 1.0)
                    start = rng.uniform(0.1, 3.9 - dur)
                    a, b = int(start * SR), int((start + dur) * SR)
                    x[a:b] += rng.uniform(0.15, 0.35) * _event_sound(str(label), b - a, rng)
                    events.append({"label": str(label), "start": round(a / SR * 1000, 3),
                                   "end": round(b / SR * 1000, 3)})
                events.sort(key=lambda e: (e["start"], e["label"]))
                tw.add(split, f"e{i:03d}.wav", fade(np.clip(x, -1, 1)), events)
                i += 1
    return tw.path


def _syn_envelope(out_root: Path) -> Path:
    name = "syn_envelope"
    rng = task_rng(name)
    shapes = ["percussive", "steady", "swelling"]
    meta = dict(task_name=name, version=VERSION, embedding_type="scene", prediction_type="multiclass",
                split_mode="trainvaltest", sample_duration=None, evaluation=["top1_acc"],
                splits=TRAINVALTEST_SPLITS)
    counts = {"train": 8, "valid": 3, "test": 3}
    i = 0
    with TaskWriter(out_root, meta, shapes) as tw:
        for split in TRAINVALTEST_SPLITS:
            for shape in shapes:
                for _ in range(counts[split]):
                    n = int(rng.uniform(0.5, 1.5) * SR)
                    t = _t(n) / (n / SR)  # 0..1 over the clip
                    env = {"percussive": np.exp(-t * 12), "steady": np.ones(n), "swelling": t ** 2}[shape]
                    x = harmonic_tone(rng.uniform(150, 900), n, np.array([1, .5, .25]), rng) * env
                    x += 0.01 * rng.standard_normal(n)
                    tw.add(split, f"v{i:03d}.wav", fade(normalise(x, rng.uniform(0.3, 0.8))), [shape])
                    i += 1
    return tw.path


TASKS = {
    "syn_pitch": _syn_pitch,
    "syn_noise": _syn_noise,
    "syn_mix": _syn_mix,
    "syn_events": _syn_events,
    "syn_envelope": _syn_envelope,
}


def build_synthetic(out_dir: Path | str, tasks: list[str] | None = None, force: bool = False) -> list[Path]:
    """Build the synthetic suite (or the named `tasks`) under `out_dir`; return the task directories.

    Complete task directories already there are kept unless `force`.
    """
    out_dir = Path(out_dir)
    names = list(TASKS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        from hearscan_core.errors import UserFacingError

        raise UserFacingError(f"unknown synthetic task(s) {unknown}; choose from {sorted(TASKS)}")
    paths = []
    for name in names:
        existing = out_dir / f"{name}-{VERSION}-full"
        if not force and is_complete(out_dir, {"task_name": name, "version": VERSION}):
            paths.append(existing)
            continue
        paths.append(TASKS[name](out_dir))
    return paths
