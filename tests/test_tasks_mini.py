"""The mini suite, built for real (apt-get download + dpkg-deb, espeak-ng, flite, fluidsynth) at a small scale.

The full suite takes minutes; `--scale 0.05` runs the same code paths on ~5 % of the clips.  Packages are
cached in ~/.cache/hearscan (or $HEARSCAN_CACHE), so only the first run downloads and unpacks them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from hearscan_core.errors import UserFacingError
from hearscan.tasks import check_task_dir
from hearscan.tasks import mini
from hearscan.tasks.sources import _read_cached, require_tools

TOOLS = ["apt-get", "dpkg-deb", "espeak-ng", "flite", "fluidsynth"]
MISSING = [t for t in TOOLS if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"mini suite tools not installed: {MISSING} "
                                 "(apt-get install -y sox libsox-fmt-all espeak-ng flite fluidsynth ffmpeg)")
SCALE = 0.05


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("mini_a"), tmp_path_factory.mktemp("mini_b")
    paths = mini.build_mini(a, scale=SCALE)
    _read_cached.cache_clear()  # the second build decodes every file again
    mini.build_mini(b, scale=SCALE)
    return a, b, paths


@needs_tools
def test_mini_build_is_byte_identical(two_builds):
    a, b, paths = two_builds
    assert [p.name for p in paths] == [f"{t}-v1-s{SCALE:g}-full" for t in mini.TASKS]
    da, db = tree_digest(a), tree_digest(b)
    assert len(da) > 200
    assert da == db


@needs_tools
def test_mini_tasks_pass_the_checker(two_builds):
    for path in two_builds[2]:
        assert check_task_dir(path) == [], path


@needs_tools
def test_mini_metadata_matches_the_issue(two_builds):
    metas = {json.loads((p / "task_metadata.json").read_text())["task_name"]: json.loads(
        (p / "task_metadata.json").read_text()) for p in two_builds[2]}
    assert metas["mini_pitch"]["evaluation"] == ["pitch_acc", "chroma_acc"]
    assert metas["mini_drums"]["split_mode"] == "presplit_kfold" and metas["mini_drums"]["nfolds"] == 5
    assert metas["mini_events"]["embedding_type"] == "event"
    assert metas["mini_events"]["prediction_type"] == "multilabel"
    assert metas["mini_events"]["evaluation"] == ["event_onset_200ms_fms", "segment_1s_er"]
    assert metas["mini_scenes"]["prediction_type"] == "multilabel" and metas["mini_scenes"]["evaluation"][0] == "mAP"
    vocab = (two_builds[2][1] / "labelvocabulary.csv").read_text().splitlines()[1:]
    assert [int(l.split(",")[1]) for l in vocab] == list(range(36, 84))  # contiguous: chroma = idx % 12
    for meta in metas.values():
        assert meta["hearscan_sources"] is not None and meta["hearscan_split"]


def sources_per_split(task: Path, source_of) -> dict[str, set]:
    meta = json.loads((task / "task_metadata.json").read_text())
    out = defaultdict(set)
    for split in meta["splits"]:
        for name in json.loads((task / f"{split}.json").read_text()):
            out[split].add(source_of(name))
    return out


@needs_tools
@pytest.mark.parametrize("task,source_of", [
    ("mini_commands", lambda n: n.split("_")[0]),  # voice id
    ("mini_pitch", lambda n: n.split("_")[0]),  # soundfont
    ("mini_drums", lambda n: n.split("_")[0]),  # kit (slugs have no underscore)
    ("mini_langid", lambda n: n.split("-")[0]),  # stamp category
])
def test_splits_never_share_a_source(two_builds, task, source_of):
    (path,) = [p for p in two_builds[2] if p.name.startswith(task + "-")]
    per_split = sources_per_split(path, source_of)
    splits = sorted(per_split)
    assert len(splits) >= 3
    for i, s in enumerate(splits):
        for t in splits[i + 1:]:
            assert not per_split[s] & per_split[t], (task, s, t, per_split[s] & per_split[t])


@needs_tools
def test_rerun_skips_complete_tasks(two_builds, capsys):
    a = two_builds[0]
    before = tree_digest(a)
    mini.build_mini(a, ["mini_commands"], scale=SCALE)
    captured = capsys.readouterr()
    assert "complete, skipped" in captured.out + captured.err
    assert tree_digest(a) == before


def test_missing_tool_names_the_apt_command(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserFacingError, match="apt-get install -y sox libsox-fmt-all espeak-ng flite fluidsynth"):
        require_tools("espeak-ng")


def test_unknown_task_and_bad_scale(tmp_path):
    with pytest.raises(UserFacingError, match="mini_commands"):
        mini.build_mini(tmp_path, ["nope"])
    with pytest.raises(UserFacingError, match="scale"):
        mini.build_mini(tmp_path, scale=2.0)


@pytest.mark.parametrize("name,cls", [
    ("Kick (Tama Superstar 22\")", "kick"), ("BassDrum", "kick"), ("Snare Rock", "snare"),
    ("Hi-Hat Closed (Paiste)", "hihat_closed"), ("Open HH", "hihat_open"), ("Pedal HH", "hihat_closed"),
    ("Hat Op Dirty", "hihat_open"), ("Tom Low", "tom"), ("Crash Left", "crash"), ("Ride 2", "ride"),
    ("Hand Clap", "clap"), ("Snare Rimshot", None), ("Ride Bell", None), ("Cowbell", None), ("Stick", None),
])
def test_drum_instrument_names(name, cls):
    assert mini.drum_class(name) == cls


def test_midi_writer_round_trip(tmp_path):
    """The MIDI file parses back (header, tempo, delta times) to the notes that were written."""
    path = tmp_path / "t.mid"
    mini.write_midi(path, [(0.0, 0.5, 12, 60, 100), (2.0, 0.8, 40, 61, 90)])
    data = path.read_bytes()
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    track, t, events, i = data[22:], 0, [], 0
    while i < len(track):
        delta = 0
        while True:
            byte = track[i]
            i += 1
            delta = (delta << 7) | (byte & 0x7F)
            if byte < 0x80:
                break
        t += delta
        status = track[i]
        if status == 0xFF:
            length = track[i + 2]
            i += 3 + length
            continue
        size = 2 if status & 0xF0 == 0xC0 else 3
        events.append((t, tuple(track[i:i + size])))
        i += size
    assert events == [(0, (0xC0, 12)), (0, (0x90, 60, 100)), (480, (0x80, 60, 0)),
                      (1920, (0xC0, 40)), (1920, (0x90, 61, 90)), (2688, (0x80, 61, 0))]
