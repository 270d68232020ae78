"""Where the mini suite's audio comes from: Debian packages (fetched, not installed) and synthesis tools.

`package_dir(name)` runs `apt-get download NAME` into ``<cache>/debs`` (once) and `dpkg-deb -x` into
``<cache>/src/<name>_<version>`` (once, atomically), so a rebuild reads straight from the cache and no
system-wide installation is needed for data.  The synthesis tools (sox, espeak-ng, flite, fluidsynth, ffmpeg)
are installed by `make setup`; `require_tools` names the apt command when one is missing.

Audio is read with soundfile (wav/flac/aiff/ogg), mixed to mono and resampled to 16 kHz with scipy's
polyphase resampler in float64: the same input bytes give the same output bytes, with no dither anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from math import gcd
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from hearscan_core.errors import UserFacingError
from formats.taskdir import SAMPLE_RATE

APT_TOOLS = "sox libsox-fmt-all espeak-ng flite fluidsynth ffmpeg"
INSTALL_HINT = f"install them with `apt-get update && apt-get install -y {APT_TOOLS}` (or `make setup`)"


def default_cache() -> Path:
    return Path(os.environ.get("HEARSCAN_CACHE", Path.home() / ".cache" / "hearscan"))


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise UserFacingError(f"the mini suite needs {', '.join(missing)} on PATH: {INSTALL_HINT}")


def run(cmd: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserFacingError(f"{what}: {cmd[0]} not found; {INSTALL_HINT}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise UserFacingError(f"{what}: `{' '.join(cmd)}` failed ({proc.returncode}): {tail}")
    return proc


class Packages:
    """Fetches and unpacks Debian packages into a cache; remembers their versions for the metadata."""

    def __init__(self, cache_dir: Path | None = None):
        self.cache = Path(cache_dir) if cache_dir else default_cache()
        self.versions: dict[str, str] = {}
        self.task_version = "v1"  # the version tag written into task metadata (scaled builds differ)

    def _deb(self, name: str) -> Path:
        debs = self.cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            if shutil.which("apt-get") is None:
                raise UserFacingError(
                    f"package {name} is not in {debs} and there is no apt-get to fetch it: download {name}'s "
                    f".deb (Debian bookworm) into {debs} yourself")
            try:
                run(["apt-get", "download", name], f"fetching Debian package {name}", cwd=debs)
            except UserFacingError as err:
                raise UserFacingError(f"{err}\n  -> run `apt-get update` first, and check the network; or put "
                                      f"{name}'s .deb into {debs}") from None
            found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            raise UserFacingError(f"apt-get download {name} left no .deb in {debs}")
        return found[-1]

    def dir(self, name: str) -> Path:
        """The unpacked root of package `name` (its files under usr/share/...)."""
        deb = self._deb(name)
        version = unquote(deb.name[len(name) + 1:].rsplit("_", 1)[0])  # "1%3a6.18" -> "1:6.18"
        self.versions[name] = version
        root = self.cache / "src" / deb.stem
        if (root / ".complete").exists():
            return root
        tmp = root.with_name(root.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
        (tmp / ".complete").write_text(version + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.rename(tmp, root)
        return root


def to_mono_16k(audio: np.ndarray, sr: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = gcd(sr, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, sr // g)
    return audio


@lru_cache(maxsize=512)  # the mixture tasks reuse recordings; bounded so memory stays small
def _read_cached(path: str) -> np.ndarray:
    data, sr = sf.read(path, dtype="float64", always_2d=True)
    out = to_mono_16k(data, sr)
    out.setflags(write=False)
    return out


def read_audio(path: Path) -> np.ndarray:
    """A file as a mono 16 kHz float64 waveform (read-only: copy before modifying)."""
    try:
        return _read_cached(str(path))
    except sf.LibsndfileError as err:
        raise UserFacingError(f"cannot read {path}: {err}; delete the cache folder to unpack it again") from None


def trim_silence(x: np.ndarray, rel_db: float = -40.0, pad: int = 160) -> np.ndarray:
    """Cut leading and trailing samples quieter than `rel_db` below the peak (keeping `pad` samples)."""
    if not len(x):
        return x
    thresh = np.max(np.abs(x)) * 10 ** (rel_db / 20)
    loud = np.flatnonzero(np.abs(x) > thresh)
    if not len(loud):
        return x[:0]
    return x[max(0, loud[0] - pad): loud[-1] + 1 + pad]


def fit_length(x: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """`x` placed at `offset` in `n` zeros (cut if longer), with 5 ms fades where it is cut."""
    out = np.zeros(n)
    seg = x[: max(0, n - offset)]
    out[offset: offset + len(seg)] = seg
    if len(x) > n - offset:  # cut: fade the end so the clip does not click
        k = min(80, len(seg))
        out[offset + len(seg) - k: offset + len(seg)] *= np.linspace(1, 0, k)
    return out


def peak_normalise(x: np.ndarray, peak: float) -> np.ndarray:
    m = np.max(np.abs(x)) if len(x) else 0.0
    return x * (peak / m) if m > 0 else x


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / (rms(x) + 1e-12)
