"""The mini suite: six small HEAR tasks from real recordings and speech/music synthesis.

No HEAR data can be downloaded here, so the audio comes from Debian packages (fetched with `apt-get download`,
unpacked into a cache) and from espeak-ng / flite / fluidsynth.  Every split is by SOURCE (voice, soundfont,
drum kit, recording), never by clip, so scores measure generalisation rather than memorisation.

    mini_commands  scene multiclass  trainvaltest    1.0 s  10 spoken words, ~130 synthetic voices (split by voice)
    mini_pitch     scene multiclass  trainvaltest    1.0 s  48 pitches (NSynth-like) from 4 GM soundfonts (split by soundfont)
    mini_drums     scene multiclass  presplit_kfold  1.0 s  8 drum-hit types from 16 recorded kits (5 folds by kit)
    mini_langid    scene multiclass  trainvaltest    1.0 s  9 languages, human recordings (split by stamp category)
    mini_events    event multilabel  trainvaltest    6.0 s  5 sound classes with onsets/offsets over ambient beds (0-15 dB)
    mini_scenes    scene multilabel  trainvaltest    4.0 s  which of 5 sound classes (1-2 per clip) a mixture holds (10-25 dB)

Determinism: every random draw comes from a generator seeded by the task name, every file listing is sorted,
the tools run with fixed parameters and no dither (fluidsynth writes float, we quantise in numpy), and
resampling is scipy's polyphase filter in float64.  The same command gives byte-identical task directories
(on the same package versions, which are recorded in each task_metadata.json under "hearscan_sources").
"""

from __future__ import annotations

import re
import struct
import tempfile
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hearscan_core.errors import UserFacingError
from formats.taskdir import SAMPLE_RATE as SR
from formats.taskdir import TRAINVALTEST_SPLITS, TaskWriter, fold_names, is_complete
from hearscan.tasks.sources import (
    Packages,
    fit_length,
    peak_normalise,
    pink_noise,
    read_audio,
    require_tools,
    rms,
    run,
    trim_silence,
)
from hearscan.tasks.synthetic import task_rng

VERSION = "v1"
TMP_PREFIX = "hearscan-tasks-"


def _scaled(n: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(round(n * scale)))


def _split_sources(sources: list, rng: np.random.Generator, fractions=(0.7, 0.15, 0.15)) -> dict[str, list]:
    """Shuffle sorted sources and cut them into train/valid/test (each gets at least one)."""
    order = [sources[i] for i in rng.permutation(len(sources))]
    n = len(order)
    n_test = max(1, int(round(n * fractions[2])))
    n_valid = max(1, int(round(n * fractions[1])))
    return {"test": order[:n_test], "valid": order[n_test:n_test + n_valid], "train": order[n_test + n_valid:]}


def _meta(name: str, packages: Packages, **fields) -> dict:
    meta = dict(task_name=name, version=packages.task_version, **fields)
    meta["hearscan_sources"] = {p: packages.versions[p] for p in sorted(packages.versions)}
    return meta


def _bar(total: int, name: str):
    return tqdm(total=total, desc=name, unit="clip", leave=False)


# ------------------------------------------------------------------ 1. spoken commands
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc"]
# espeak-ng voice variants (files in espeak-ng-data/voices/!v); the ones installed are used
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak",
                   "klatt", "klatt2", "klatt3", "klatt4", "klatt6", "adam", "Alex", "Andy", "Annie", "aunty",
                   "boris", "david", "ed", "edward", "grandma", "grandpa", "iven", "john", "linda", "max",
                   "Michael", "norbert", "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac",
                   "belinda", "benjamin", "caleb", "shelby", "sandro", "pablo", "pedro", "gustave"]
FLITE_VOICES = ["awb", "kal", "kal16", "rms", "slt"]


def _espeak_variants() -> list[str]:
    out = run(["espeak-ng", "--voices=variant"], "listing espeak-ng voices").stdout
    installed = set(re.findall(r"!v/(\S+)", out))
    found = [v for v in ESPEAK_VARIANTS if v in installed]
    if len(found) < 10:
        raise UserFacingError(f"espeak-ng lists only {len(found)} of the expected voice variants; "
                              "reinstall it: apt-get install --reinstall espeak-ng-data")
    return found


def _commands(out: Path, packages: Packages, scale: float) -> Path:
    name = "mini_commands"
    require_tools("espeak-ng", "flite")
    rng = task_rng(name)
    variants = _espeak_variants()
    n_espeak, n_flite = _scaled(104, scale, 6), _scaled(26, scale, 3)
    voices = []  # (voice id, engine, command prefix)
    for i in range(n_espeak):
        accent = ESPEAK_ACCENTS[int(rng.integers(len(ESPEAK_ACCENTS)))]
        variant = variants[int(rng.integers(len(variants)))]
        pitch, speed = int(rng.integers(15, 86)), int(rng.integers(120, 200))
        voices.append((f"es{i:03d}", "espeak", ["espeak-ng", "-v", f"{accent}+{variant}", "-p", str(pitch),
                                                 "-s", str(speed)]))
    for i in range(n_flite):
        voice = FLITE_VOICES[i % len(FLITE_VOICES)]
        stretch, f0 = rng.uniform(0.8, 1.3), int(rng.integers(80, 240))
        voices.append((f"fl{i:03d}", "flite", ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.2f}",
                                                "--setf", f"int_f0_target_mean={f0}"]))
    # split by voice, separately per engine so both engines appear in every split
    split_of = {}
    for engine in ("espeak", "flite"):
        ids = [v[0] for v in voices if v[1] == engine]
        for split, members in _split_sources(ids, rng).items():
            split_of.update({m: split for m in members})
    meta = _meta(name, packages, embedding_type="scene", prediction_type="multiclass", split_mode="trainvaltest",
                 sample_duration=1.0, evaluation=["top1_acc"], splits=TRAINVALTEST_SPLITS,
                 hearscan_split="by synthetic voice (engine, accent, variant, pitch, speed)")
    jobs = [(vid, engine, prefix, word) for vid, engine, prefix in voices for word in WORDS]
    # per-clip augmentation drawn up front, in job order, so threading cannot change any draw
    params = [(rng.uniform(0.2, 0.9), rng.uniform(5, 25), int(rng.integers(1 << 31))) for _ in jobs]
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp, TaskWriter(out, meta, sorted(WORDS)) as tw:
        def synth(job):
            vid, engine, prefix, word = job
            wav = Path(tmp) / f"{vid}_{word}.wav"
            cmd = prefix + (["-w", str(wav), word] if engine == "espeak" else ["-t", word, "-o", str(wav)])
            run(cmd, f"synthesising {word!r} with {engine}")
            return read_audio(wav)

        with ThreadPoolExecutor(2) as pool, _bar(len(jobs), name) as bar:
            for job, audio, (peak, snr_db, seed) in zip(jobs, pool.map(synth, jobs), params):
                vid, _, _, word = job
                clip_rng = np.random.default_rng(seed)
                speech = trim_silence(audio)[:SR]
                offset = int(clip_rng.integers(0, SR - len(speech) + 1))
                x = fit_length(peak_normalise(speech, 1.0), SR, offset)
                x = x + pink_noise(SR, clip_rng) * rms(speech / (np.abs(speech).max() + 1e-12)) * 10 ** (-snr_db / 20)
                tw.add(split_of[vid], f"{vid}_{word}.wav", peak_normalise(x, peak), [word])
                bar.update()
    return tw.path


# ------------------------------------------------------------------ 2. instrument pitch (NSynth-like)
PITCHES = list(range(36, 84))  # C2..B5, contiguous so chroma_acc's idx % 12 is the pitch class
# GM programs: piano, harpsichord, vibraphone, marimba, church organ, nylon guitar, distorted guitar,
# acoustic bass, violin, pizzicato strings, trumpet, clarinet, flute, pad
PROGRAMS = [0, 6, 11, 12, 19, 24, 30, 32, 40, 45, 56, 71, 73, 89]
PROGRAMS_PER_PITCH = 5  # each soundfont plays every pitch on 5 of the programs (drawn per soundfont)
SOUNDFONTS = {  # package -> (file inside it, split)
    "fluid-soundfont-gm": ("usr/share/sounds/sf2/FluidR3_GM.sf2", "train"),
    "opl3-soundfont": ("usr/share/sounds/sf2/OPL-3_FM_128M.sf2", "train"),
    "csound-soundfont": ("usr/share/sounds/sf2/sf_GMbank.sf2", "valid"),
    "timgm6mb-soundfont": ("usr/share/sounds/sf2/TimGM6mb.sf2", "test"),
}
NOTE_SPACING_S = 2.0  # one note every 2 s in the rendered MIDI, so release tails never overlap the next clip


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, notes: list[tuple[float, float, int, int, int]]) -> None:
    """A format-0 MIDI file: notes (start s, duration s, program, pitch, velocity) on channel 0, 120 bpm."""
    tpq, us_per_quarter = 480, 500_000
    ticks_per_s = tpq * 1e6 / us_per_quarter
    events = []
    for start, dur, program, pitch, velocity in notes:
        t0, t1 = round(start * ticks_per_s), round((start + dur) * ticks_per_s)
        events += [(t0, 1, bytes([0xC0, program])), (t0, 2, bytes([0x90, pitch, velocity])),
                   (t1, 0, bytes([0x80, pitch, 0]))]
    events.sort(key=lambda e: (e[0], e[1]))
    track = bytearray(b"\x00\xff\x51\x03" + us_per_quarter.to_bytes(3, "big"))
    last = 0
    for t, _, msg in events:
        track += _vlq(t - last) + msg
        last = t
    track += b"\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(track))
                     + bytes(track))


def _pitch(out: Path, packages: Packages, scale: float) -> Path:
    name = "mini_pitch"
    require_tools("fluidsynth")
    rng = task_rng(name)
    per_pitch = _scaled(PROGRAMS_PER_PITCH, scale, 1)
    fonts = {pkg: (packages.dir(pkg) / rel, split) for pkg, (rel, split) in SOUNDFONTS.items()}
    meta = _meta(name, packages, embedding_type="scene", prediction_type="multiclass", split_mode="trainvaltest",
                 sample_duration=1.0, evaluation=["pitch_acc", "chroma_acc"], splits=TRAINVALTEST_SPLITS,
                 hearscan_split="by soundfont: train FluidR3_GM + OPL-3 FM, valid csound GM bank, test TimGM6mb")
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp, \
            TaskWriter(out, meta, [str(p) for p in PITCHES]) as tw, \
            _bar(len(PITCHES) * per_pitch * len(fonts), name) as bar:
        for pkg, (sf2, split) in fonts.items():
            notes = [(int(prog), pitch) for pitch in PITCHES
                     for prog in sorted(rng.permutation(PROGRAMS)[:per_pitch])]
            # velocity and held duration vary per note; drawn per soundfont in a fixed order
            velocities = rng.integers(60, 121, size=len(notes))
            holds = rng.uniform(0.5, 0.9, size=len(notes))
            midi, wav = Path(tmp) / f"{pkg}.mid", Path(tmp) / f"{pkg}.wav"
            write_midi(midi, [(i * NOTE_SPACING_S, float(holds[i]), prog, pitch, int(velocities[i]))
                              for i, (prog, pitch) in enumerate(notes)])
            # -O float: no dither (fluidsynth dithers 16-bit output); -R/-C 0: dry, no reverb tail
            run(["fluidsynth", "-ni", "-q", "-g", "0.5", "-R", "0", "-C", "0", "-r", str(SR), "-O", "float",
                 "-F", str(wav), str(sf2), str(midi)], f"rendering notes with {sf2.name}")
            audio = read_audio(wav)
            for i, (prog, pitch) in enumerate(notes):
                a = int(round(i * NOTE_SPACING_S * SR))
                clip = np.array(audio[a:a + SR])
                if len(clip) < SR:
                    clip = fit_length(clip, SR)
                if rms(clip) < 1e-4:  # the soundfont has no sample for this program/pitch
                    bar.update()
                    continue
                tw.add(split, f"{pkg.split('-')[0]}_p{prog:03d}_n{pitch}.wav", peak_normalise(clip, 0.7), [str(pitch)])
                bar.update()
    return tw.path


# ------------------------------------------------------------------ 3. drum-hit type
DRUM_CLASSES = ["clap", "crash", "hihat_closed", "hihat_open", "kick", "ride", "snare", "tom"]
_DRUM_SKIP = re.compile(r"rim|stick|bell|roll|cowbell|conga|bongo|cajon|tamb|agogo|whistle|click|snap|maraca|"
                        r"shaker|clav|perc|fx|scratch|reverse")


def drum_class(instrument: str) -> str | None:
    """A Hydrogen instrument name (or sample file name) -> one of DRUM_CLASSES, or None when ambiguous."""
    n = instrument.lower().replace("_", " ")
    if _DRUM_SKIP.search(n):
        return None
    if re.search(r"kick|bass ?drum|\bbd\b", n):
        return "kick"
    if re.search(r"snare|\bsn\b", n):
        return "snare"
    if re.search(r"h(i|igh)?[- ]?h(at)?\b|hat|hh", n):
        if re.search(r"open|opened|\bop\b", n):
            return "hihat_open"
        if re.search(r"closed|\bcl\b|pedal|foot", n):
            return "hihat_closed"
        return None
    if "tom" in n:
        return "tom"
    if re.search(r"crash|splash|china", n):
        return "crash"
    if "ride" in n:
        return "ride"
    if "clap" in n:
        return "clap"
    return None


def _hydrogen_kits(root: Path) -> dict[str, list[tuple[Path, str]]]:
    kits = {}
    for kit_dir in sorted(p for p in root.glob("usr/share/hydrogen/data/drumkits/*") if p.is_dir()):
        xml = kit_dir / "drumkit.xml"
        if not xml.is_file():
            continue
        tree = ET.parse(xml)
        items = set()
        for inst in tree.iter():
            if not inst.tag.endswith("instrument"):
                continue
            iname = next((c.text for c in inst if c.tag.endswith("name")), None) or ""
            cls = drum_class(iname)
            if cls is None:
                continue
            for f in inst.iter():
                if f.tag.endswith("filename") and f.text and (kit_dir / f.text).is_file():
                    items.add((kit_dir / f.text, cls))
        if items:
            kits[f"hydrogen:{kit_dir.name}"] = sorted(items)
    return kits


def _sonic_pi_kit(root: Path) -> list[tuple[Path, str]]:
    renames = {"drum_cymbal_closed": "hihat_closed", "drum_cymbal_pedal": "hihat_closed",
               "drum_cymbal_open": "hihat_open", "drum_splash": "crash", "drum_cymbal_hard": "crash",
               "drum_cymbal_soft": "crash", "drum_bass": "kick", "drum_heavy_kick": "kick"}
    items = []
    for f in sorted(root.glob("usr/share/sonic-pi/samples/*.flac")):
        stem = f.stem
        cls = next((c for prefix, c in renames.items() if stem.startswith(prefix)), None)
        if cls is None and re.match(r"(bd|sn|drum|elec)_", stem):
            cls = drum_class(stem.replace("bd_", "kick ").replace("sn_", "snare "))
        if cls:
            items.append((f, cls))
    return items


def _drums(out: Path, packages: Packages, scale: float) -> Path:
    name = "mini_drums"
    rng = task_rng(name)
    kits = _hydrogen_kits(packages.dir("hydrogen-drumkits"))
    kits.update(_hydrogen_kits(packages.dir("hydrogen-data")))
    kits["sonic-pi"] = _sonic_pi_kit(packages.dir("sonic-pi-samples"))
    if scale < 1:
        kits = {k: [v[i] for i in sorted(rng.permutation(len(v))[:_scaled(len(v), scale)])] for k, v in kits.items()}
    folds = fold_names(5)
    # folds by kit: biggest kits first, each to the fold with the fewest clips so far
    load = [0] * len(folds)
    fold_of = {}
    for kit in sorted(kits, key=lambda k: (-len(kits[k]), k)):
        f = min(range(len(folds)), key=lambda i: (load[i], i))
        fold_of[kit] = folds[f]
        load[f] += len(kits[kit])
    meta = _meta(name, packages, embedding_type="scene", prediction_type="multiclass", split_mode="presplit_kfold",
                 nfolds=5, sample_duration=1.0, evaluation=["top1_acc"], splits=folds,
                 hearscan_split="folds by drum kit: " + "; ".join(f"{k} -> {fold_of[k]}" for k in sorted(kits)))
    total = sum(len(v) for v in kits.values())
    with TaskWriter(out, meta, DRUM_CLASSES) as tw, _bar(total, name) as bar:
        for kit in sorted(kits):
            slug = re.sub(r"[^A-Za-z0-9]+", "-", kit.split(":")[-1]).strip("-")
            for j, (path, cls) in enumerate(kits[kit]):
                hit = trim_silence(read_audio(path), rel_db=-50)
                bar.update()
                if len(hit) < 160:
                    continue
                x = fit_length(peak_normalise(hit, rng.uniform(0.3, 0.9)), SR)
                tw.add(fold_of[kit], f"{slug}_{j:03d}_{cls}.wav", x, [cls])
    return tw.path


# ------------------------------------------------------------------ 4. spoken language identification
LANGUAGES = ["be", "bg", "ca", "da", "el", "es", "fr", "ro", "ru"]
# stamp categories (top-level folders of tuxpaint's stamps): all languages' descriptions of one stamp share
# a split, and so do all stamps of a category
LANGID_SPLIT = {"food": "test", "plants": "test", "sports": "test", "space": "test",
                "vehicles": "valid", "clothes": "valid", "people": "valid"}
LANGID_PER_LANGUAGE = {"train": 60, "valid": 15, "test": 15}


def _random_tilt(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random first-order low- or high-shelf: y = x + g * (one-pole low-pass of x), g in [-0.9, 1.5]."""
    from scipy.signal import lfilter

    a = rng.uniform(0.3, 0.95)
    low = lfilter([1 - a], [1, -a], x)
    return x + rng.uniform(-0.9, 1.5) * low


def _langid(out: Path, packages: Packages, scale: float) -> Path:
    name = "mini_langid"
    rng = task_rng(name)
    stamps = packages.dir("tuxpaint-stamps-default") / "usr/share/tuxpaint/stamps"
    meta = _meta(name, packages, embedding_type="scene", prediction_type="multiclass", split_mode="trainvaltest",
                 sample_duration=1.0, evaluation=["top1_acc"], splits=TRAINVALTEST_SPLITS,
                 hearscan_split="by tuxpaint stamp category: test " + ", ".join(
                     sorted(c for c, s in LANGID_SPLIT.items() if s == "test")) + "; valid " + ", ".join(
                     sorted(c for c, s in LANGID_SPLIT.items() if s == "valid")) + "; train the rest")
    chosen = []
    for lang in LANGUAGES:
        files = sorted(stamps.rglob(f"*_desc_{lang}.ogg"))
        by_split = {s: [f for f in files if LANGID_SPLIT.get(f.relative_to(stamps).parts[0], "train") == s]
                    for s in TRAINVALTEST_SPLITS}
        for split, pool in by_split.items():
            k = _scaled(LANGID_PER_LANGUAGE[split], scale)
            if len(pool) < k:
                raise UserFacingError(f"{name}: only {len(pool)} {lang} descriptions for {split} in {stamps}")
            chosen += [(split, lang, pool[i]) for i in sorted(rng.permutation(len(pool))[:k])]
    n = SR  # 1 s crops: long enough to hear the language, short enough that it is not trivial
    with TaskWriter(out, meta, LANGUAGES) as tw, _bar(len(chosen), name) as bar:
        for split, lang, path in chosen:
            speech = trim_silence(read_audio(path))
            start = int(rng.integers(0, max(1, len(speech) - n) + 1)) if len(speech) > n else 0
            x = fit_length(speech[start:start + n], n)
            # each language was read by few speakers: a random channel (spectral tilt) and noise at -5-10 dB SNR
            # keep the task about more than recognising a voice's recording set-up
            x = _random_tilt(x, rng)
            x = x + pink_noise(n, rng) * rms(x) * 10 ** (-rng.uniform(-5, 10) / 20)
            stem = re.sub(r"[^A-Za-z0-9]+", "-", str(path.relative_to(stamps).with_suffix("")))
            tw.add(split, f"{stem}.wav", peak_normalise(x, rng.uniform(0.3, 0.9)), [lang])
            bar.update()
    return tw.path


# ------------------------------------------------------------------ 5./6. mixtures: events and scenes
SOUND_CLASSES = ["alert", "bird", "drum", "mammal", "speech"]


def _stamp_sounds(stamps: Path, folder: str) -> list[Path]:
    """Tux Paint stamp sound effects (`<stamp>.ogg` next to `<stamp>.png`; `_desc` files are speech)."""
    return sorted(p for p in (stamps / folder).rglob("*.ogg")
                  if "_desc" not in p.stem and p.with_suffix(".png").exists())


def _sound_pools(packages: Packages) -> tuple[dict[str, list[Path]], list[Path]]:
    stamps = packages.dir("tuxpaint-stamps-default") / "usr/share/tuxpaint/stamps"
    sonic = packages.dir("sonic-pi-samples") / "usr/share/sonic-pi/samples"
    theme = packages.dir("sound-theme-freedesktop") / "usr/share/sounds/freedesktop/stereo"
    drums = [p for kit in _hydrogen_kits(packages.dir("hydrogen-drumkits")).values() for p, _ in kit]
    pools = {
        "alert": sorted(theme.glob("*.oga")) + sorted(sonic.glob("elec_b*.flac")) + sorted(sonic.glob("perc_bell*")),
        "bird": _stamp_sounds(stamps, "animals/birds"),
        "drum": sorted(set(drums))[::4],  # every 4th hit: enough variety, fewer files to decode
        "mammal": _stamp_sounds(stamps, "animals/mammals"),
        # English descriptions (`_desc.ogg`): different speakers and words from the language task's
        "speech": sorted(stamps.rglob("*_desc.ogg")),
    }
    backgrounds = (sorted(sonic.glob("ambi_*.flac")) + [sonic / "vinyl_hiss.flac"]
                   + _stamp_sounds(stamps, "household"))
    return pools, backgrounds


def _load_event(path: Path, rng: np.random.Generator, max_s: float) -> np.ndarray:
    x = trim_silence(read_audio(path), rel_db=-35)
    n = int(rng.uniform(0.4, max_s) * SR)
    if len(x) > n:
        x = trim_silence(x[:n], rel_db=-35)
        x = fit_length(x, len(x))  # fade the cut end
    return x


def _background(paths: list[Path], n: int, rng: np.random.Generator) -> np.ndarray:
    bed = read_audio(paths[int(rng.integers(len(paths)))])
    if len(bed) < n:
        bed = np.tile(bed, n // max(1, len(bed)) + 1)
    start = int(rng.integers(0, len(bed) - n + 1))
    x = np.array(bed[start:start + n]) + 0.05 * pink_noise(n, rng) * rms(bed)
    return x / (rms(x) + 1e-12)


def _mixture(pools, beds, n: int, labels: list[str], rng: np.random.Generator, max_event_s: float,
             snr_db: tuple[float, float]):
    """A scene of `n` samples: a background plus one or two events of each label, `snr_db` (RMS) above it."""
    x = _background(beds, n, rng) * 0.05
    events = []
    for label in labels:
        for _ in range(int(rng.integers(1, 3))):
            for _attempt in range(20):  # a few recordings are near-silent after trimming: draw another
                ev = _load_event(pools[label][int(rng.integers(len(pools[label])))], rng, max_event_s)
                if len(ev) >= 160:
                    break
            else:
                raise UserFacingError(f"no usable {label!r} recording found in 20 draws; the package cache may "
                                      "be damaged: delete it and rebuild")
            ev = ev[: n - 160]
            start = int(rng.integers(0, n - len(ev) + 1))
            gain = 0.05 * 10 ** (rng.uniform(snr_db[0], snr_db[1]) / 20) / (rms(ev) + 1e-12)
            x[start:start + len(ev)] += gain * ev
            events.append({"label": label, "start": round(start / SR * 1000, 3),
                           "end": round((start + len(ev)) / SR * 1000, 3)})
    events.sort(key=lambda e: (e["start"], e["label"]))
    return x, events


def _mix_task(out: Path, packages: Packages, scale: float, name: str, event: bool) -> Path:
    rng = task_rng(name)
    pools, beds = _sound_pools(packages)
    # split every pool, and the backgrounds, by source recording
    split_pools = {s: {} for s in TRAINVALTEST_SPLITS}
    for label in SOUND_CLASSES:
        for split, members in _split_sources(pools[label], rng).items():
            split_pools[split][label] = sorted(members)
    split_beds = {s: sorted(m) for s, m in _split_sources(beds, rng, (0.6, 0.2, 0.2)).items()}
    seconds = 6.0 if event else 4.0
    counts = {"train": 160, "valid": 40, "test": 40} if event else {"train": 200, "valid": 50, "test": 50}
    evaluation = ["event_onset_200ms_fms", "segment_1s_er"] if event else ["mAP", "d_prime", "aucroc"]
    meta = _meta(name, packages, embedding_type="event" if event else "scene", prediction_type="multilabel",
                 split_mode="trainvaltest", sample_duration=seconds, evaluation=evaluation, splits=TRAINVALTEST_SPLITS,
                 hearscan_split="by source recording (each sound file and background in one split only)")
    n = int(seconds * SR)
    plan = []
    for split in TRAINVALTEST_SPLITS:
        for i in range(_scaled(counts[split], scale, 10)):
            # scenes: every label present in some clips and absent in others (mAP/d_prime need both)
            k = int(rng.integers(1, 4 if event else 3))  # scenes hold 1-2 classes, event scenes 1-3
            labels = sorted(str(l) for l in rng.permutation(SOUND_CLASSES)[:k])
            plan.append((split, i, labels))
    with TaskWriter(out, meta, SOUND_CLASSES) as tw, _bar(len(plan), name) as bar:
        for split, i, labels in plan:
            x, events = _mixture(split_pools[split], split_beds[split], n, labels, rng, 2.0 if event else 2.5,
                                 (0, 15) if event else (10, 25))
            x = peak_normalise(x, rng.uniform(0.3, 0.9))
            tw.add(split, f"{split}_{i:04d}.wav", x, events if event else sorted({e["label"] for e in events}))
            bar.update()
    return tw.path


def _events(out: Path, packages: Packages, scale: float) -> Path:
    return _mix_task(out, packages, scale, "mini_events", event=True)


def _scenes(out: Path, packages: Packages, scale: float) -> Path:
    return _mix_task(out, packages, scale, "mini_scenes", event=False)


# ------------------------------------------------------------------ suite
TASKS = {
    "mini_commands": (_commands, []),
    "mini_pitch": (_pitch, list(SOUNDFONTS)),
    "mini_drums": (_drums, ["hydrogen-drumkits", "hydrogen-data", "sonic-pi-samples"]),
    "mini_langid": (_langid, ["tuxpaint-stamps-default"]),
    "mini_events": (_events, ["tuxpaint-stamps-default", "sonic-pi-samples", "sound-theme-freedesktop",
                              "hydrogen-drumkits"]),
    "mini_scenes": (_scenes, ["tuxpaint-stamps-default", "sonic-pi-samples", "sound-theme-freedesktop",
                              "hydrogen-drumkits"]),
}


def build_mini(out_dir: Path | str, tasks: list[str] | None = None, force: bool = False, scale: float = 1.0,
               cache_dir: Path | str | None = None) -> list[Path]:
    """Build the mini suite (or the named `tasks`) under `out_dir`; return the task directories.

    `scale` < 1 builds proportionally fewer clips (same tools, same code paths) for quick tests; a scaled
    build gets its own version tag (``v1-s0.1``) so it is never mistaken for the full one.
    """
    out_dir = Path(out_dir)
    names = list(TASKS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise UserFacingError(f"unknown mini task(s) {unknown}; choose from {sorted(TASKS)}")
    if not 0 < scale <= 1:
        raise UserFacingError(f"--scale must be in (0, 1], got {scale}")
    version = VERSION if scale == 1 else f"{VERSION}-s{scale:g}"
    require_tools("dpkg-deb")
    paths = []
    for name in tqdm(names, desc="mini suite", unit="task"):
        if not force and is_complete(out_dir, {"task_name": name, "version": version}):
            tqdm.write(f"{name}: complete, skipped (--force rebuilds)")
            paths.append(out_dir / f"{name}-{version}-full")
            continue
        packages = Packages(cache_dir)
        packages.task_version = version
        for pkg in TASKS[name][1]:
            packages.dir(pkg)  # fetch and unpack first, so versions are known for the metadata
        paths.append(TASKS[name][0](out_dir, packages, scale))
    return paths
