"""The extraction engine: HEAR task directories in, heareval-format embedding directories out.

For each module (loaded once) and task, every split is embedded in batches of equal-length clips (so no
padding changes any embedding), each finished batch is saved as a chunk file, and when a split is complete
its chunks are assembled into exactly the files heareval's predictions runner reads:
`<split>.embeddings.npy` (raw float32 memmap, rows in heareval's shuffled order), `<split>.embedding-
dimensions.json`, `<split>.target-labels.pkl`, events: `<split>.filename-timestamps.json`; plus the
metadata copies, `profile.embeddings.json`, `hearscan-manifest.json` and the `.done.embeddings` marker.

Resume: a task is built in `OUT/<tag>/.partial-<task>/` and renamed to `OUT/<tag>/<task>/` only when
complete.  Chunk files and split outputs are written to temporary names and renamed, so a `kill -9` at
any moment loses at most the batch in flight; running the same command again continues from the
chunks on disk and produces the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import platform
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from feature_extract.modules import (
    WEIGHTS_FREE_DEFAULT, ModuleSpec, configured_specs, file_sha256, import_module, parse_specs,
)
from formats.embeddings import (
    DONE, MANIFEST, heareval_file_order, labels_for_timestamps, make_seed_views, write_split_files,
)
from formats.taskdir import Task, audio_dir, find_tasks, probe_wav, read_task, read_wav
from hearscan_core import __version__
from hearscan_core.errors import AudioInputError, DiskFullError, UserFacingError
from hearscan_core.files import atomic_copy, atomic_write, atomic_write_json, exclusive, publish_dir
from hearscan_core.seeds import parse_seeds


@dataclass
class ModuleStats:
    tag: str
    clips: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    tasks_done: int = 0
    tasks_skipped: int = 0
    bad_files: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------- helpers
def plan_batches(lengths: dict[str, int], sample_rate: int, max_batch_seconds: float) -> list[list[str]]:
    """Group equal-length clips (sorted by length, then name) into batches of at most
    `max_batch_seconds` of audio; a clip longer than that is a batch of its own."""
    by_length: dict[int, list[str]] = {}
    for name, n in lengths.items():
        by_length.setdefault(n, []).append(name)
    batches = []
    for n in sorted(by_length):
        names = sorted(by_length[n])
        size = max(1, int(max_batch_seconds * sample_rate // n))
        batches += [names[i : i + size] for i in range(0, len(names), size)]
    return batches


class LoadedModule:
    """A HEAR module loaded once, with heareval's device placement for foreign torch modules."""

    def __init__(self, spec: ModuleSpec):
        self.spec = spec
        self.module = import_module(spec.module)
        for fn in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
            if not hasattr(self.module, fn):
                raise UserFacingError(f"{spec.module} is not a HEAR module: it has no {fn}()")
        args = [spec.checkpoint] if spec.checkpoint else []
        self.model = self.module.load_model(*args, **spec.options)
        self.sample_rate = int(self.model.sample_rate)
        if not isinstance(self.model, torch.nn.Module):
            raise UserFacingError(f"{spec.module}.load_model returned a {type(self.model).__name__}; hearscan runs torch modules")
        # hearscan modules place themselves (their `device` option); others get heareval's placement
        if not spec.module.startswith("hear_modules.") and torch.cuda.is_available():
            self.model.to("cuda")
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        self.device = tensors[0].device if tensors else torch.device("cpu")

    def embed(self, audio: np.ndarray, event: bool):
        x = torch.from_numpy(audio).to(self.device)
        with torch.no_grad():
            if event:
                emb, ts = self.module.get_timestamp_embeddings(x, self.model)
                return emb.float().cpu().numpy(), ts.float().cpu().numpy()
            return self.module.get_scene_embeddings(x, self.model).float().cpu().numpy(), None

    def manifest(self) -> dict:
        """What made these embeddings; computed once per module (the checkpoint hash reads the whole file)."""
        if getattr(self, "_manifest", None) is None:
            self._manifest = self._describe()
        return json.loads(json.dumps(self._manifest))  # a copy the caller may extend

    def _describe(self) -> dict:
        import torchaudio

        config = getattr(self.model, "config", None)
        return {
            "module": self.spec.module,
            "tag": self.spec.tag,
            "checkpoint": str(Path(self.spec.checkpoint).resolve()) if self.spec.checkpoint else None,
            "checkpoint_sha256": file_sha256(self.spec.checkpoint),
            "options": self.spec.options,
            "configuration": {
                "sample_rate": self.sample_rate,
                "scene_embedding_size": int(self.model.scene_embedding_size),
                "timestamp_embedding_size": int(self.model.timestamp_embedding_size),
                **({"model": config} if isinstance(config, dict) else {}),
            },
            "device": str(self.device),
            "versions": {
                "hearscan": __version__,
                "torch": torch.__version__,
                "torchaudio": torchaudio.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "machine": platform.machine(),
        }


def _identity(manifest: dict) -> dict:
    """The parts of a manifest that must agree for outputs to be resumed or reused."""
    return {k: manifest[k] for k in ("module", "checkpoint_sha256", "options", "configuration")}


# --------------------------------------------------------------------------------------------- engine
class Extractor:
    def __init__(self, out_dir: Path, skip_bad: bool = False, max_batch_seconds: float = 120.0,
                 progress: bool = True, log=print):
        self.out_dir = Path(out_dir)
        self.skip_bad = skip_bad
        self.max_batch_seconds = max_batch_seconds
        self.progress = progress
        self.log = log

    def run(self, tasks_dir: Path, specs: list[ModuleSpec]) -> list[ModuleStats]:
        tasks = [read_task(p) for p in find_tasks(tasks_dir)]
        tags = [s.tag for s in specs]
        if len(set(tags)) != len(tags):
            raise UserFacingError(f"two modules would write to the same folder ({tags}); extract them into different OUT dirs")
        stats = []
        for spec in specs:
            stats.append(self.run_module(tasks, spec))
        return stats

    def run_module(self, tasks: list[Task], spec: ModuleSpec) -> ModuleStats:
        stats = ModuleStats(spec.tag)
        start = time.perf_counter()
        loaded = None
        for task in tasks:
            final = self.out_dir / spec.tag / task.name
            if (final / DONE).exists():
                if loaded is None:  # the identity check needs the module's configuration
                    loaded = LoadedModule(spec)
                self._check_finished(final, loaded.manifest())
                stats.tasks_skipped += 1
                self.log(f"{spec.tag}/{task.name}: already complete, skipped")
                continue
            if loaded is None:
                self.log(f"loading {spec.module}" + (f" from {spec.checkpoint}" if spec.checkpoint else ""))
                loaded = LoadedModule(spec)
            (self.out_dir / spec.tag).mkdir(parents=True, exist_ok=True)
            # one writer per task: two runs into one OUT (or machines sharing it) never share a .partial folder
            with exclusive(self.out_dir / spec.tag / f".lock-{task.name}", f"{spec.tag}/{task.name}", self.log):
                if (final / DONE).exists():  # finished by another run meanwhile
                    stats.tasks_skipped += 1
                    continue
                try:
                    self.run_task(loaded, task, stats)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    _remove_temps(self.out_dir / spec.tag / f".partial-{task.name}")
                    raise DiskFullError(self.out_dir) from None
            stats.tasks_done += 1
        stats.wall_seconds = time.perf_counter() - start
        return stats

    def _check_finished(self, final: Path, manifest: dict) -> None:
        path = final / MANIFEST
        if path.exists() and _identity(json.loads(path.read_text())) != _identity(manifest):
            raise UserFacingError(
                f"{final} was extracted with a different checkpoint, options or configuration "
                f"(see {path}); write to another OUT directory or remove {final}"
            )

    # ------------------------------------------------------------------------------------- one task
    def run_task(self, loaded: LoadedModule, task: Task, stats: ModuleStats) -> None:
        spec = loaded.spec
        final = self.out_dir / spec.tag / task.name
        work = self.out_dir / spec.tag / f".partial-{task.name}"
        manifest = loaded.manifest()
        if work.exists():
            old = work / MANIFEST
            if not old.exists() or _identity(json.loads(old.read_text())) != _identity(manifest):
                self.log(f"{spec.tag}/{task.name}: discarding an unfinished run made with other settings")
                shutil.rmtree(work)
            else:
                self.log(f"{spec.tag}/{task.name}: resuming an unfinished run")
        work.mkdir(parents=True, exist_ok=True)
        if not (work / MANIFEST).exists():
            atomic_write_json(work / MANIFEST, {**manifest, "started": _now()}, indent=2)

        folder = audio_dir(task, loaded.sample_rate)
        files, skipped = self._probe_files(task, folder)
        order = heareval_file_order(task.metadata, {s: list(lengths) for s, lengths in files.items()})
        task_start = time.perf_counter()
        for name in ("task_metadata.json", "labelvocabulary.csv"):
            atomic_copy(task.path / name, work / name)
        for split in task.metadata["splits"]:
            atomic_copy(task.path / f"{split}.json", work / f"{split}.json")
            if (work / f".done.{split}").exists():
                continue
            if not files[split]:
                raise UserFacingError(f"every file of split {split} of task {task.name} was skipped as bad")
            self._embed_split(loaded, task, split, folder / split, files[split], work, stats)
            self._assemble_split(task, split, order[split], work, final)
            atomic_write(work / f".done.{split}", b"")

        atomic_write_json(work / "profile.embeddings.json", {
            "time_elapsed": time.perf_counter() - task_start, "gpu_max_mem": None,
            "gpu_device_name": torch.cuda.get_device_name() if loaded.device.type == "cuda" else None,
        }, indent=4)
        done_manifest = json.loads((work / MANIFEST).read_text())
        done_manifest.update(finished=_now(), skipped_bad_files=skipped)
        atomic_write_json(work / MANIFEST, done_manifest, indent=2)
        for marker in work.glob(".done.*"):
            marker.unlink()
        (work / DONE).write_bytes(b"")
        publish_dir(work, final)  # replacing an unfinished folder from another tool (heareval's runner) or a crash
        stats.bad_files += skipped
        self.log(f"{spec.tag}/{task.name}: done")

    def _probe_files(self, task: Task, folder: Path):
        """Lengths of every clip per split (from headers); bad files raise, or are skipped and recorded."""
        files, skipped = {}, []
        for split, data in task.splits.items():
            files[split] = {}
            for name in data:
                path = folder / split / name
                try:
                    if self.skip_bad:  # read fully, so that NaN content is also found before any batch runs
                        files[split][name] = len(read_wav(path, int(folder.name)))
                    else:
                        files[split][name] = probe_wav(path, int(folder.name))
                except AudioInputError as err:
                    if not self.skip_bad:
                        raise
                    skipped.append({"split": split, "file": name, "reason": str(err)})
        return files, skipped

    def _embed_split(self, loaded, task, split, folder, lengths, work, stats):
        chunks = work / f".chunks-{split}"
        chunks.mkdir(exist_ok=True)
        # Chunks are keyed by the clips they hold, not by a batch plan: a resume keeps every verified chunk and
        # plans batches only for the clips still missing (with this run's --max-batch-seconds).
        done, next_index = self._verified_chunks(chunks, set(lengths), f"{loaded.spec.tag}/{task.name}/{split}")
        remaining = {name: n for name, n in lengths.items() if name not in done}
        todo = list(enumerate(plan_batches(remaining, loaded.sample_rate, self.max_batch_seconds), start=next_index))
        bar = tqdm(total=len(lengths), initial=len(lengths) - len(remaining),
                   desc=f"{loaded.spec.tag} {task.name} {split}", unit="clip", disable=not self.progress,
                   leave=False, file=sys.stderr)

        def read(batch):
            return np.stack([read_wav(folder / name, loaded.sample_rate) for name in batch])

        with ThreadPoolExecutor(max_workers=1) as pool:  # read the next batch while this one computes
            pending = pool.submit(read, todo[0][1]) if todo else None
            for j, (i, batch) in enumerate(todo):
                audio = pending.result()
                if j + 1 < len(todo):
                    pending = pool.submit(read, todo[j + 1][1])
                t0 = time.perf_counter()
                emb, ts = loaded.embed(audio, task.is_event)
                stats.compute_seconds += time.perf_counter() - t0
                stats.clips += len(batch)
                stats.audio_seconds += sum(lengths[n] for n in batch) / loaded.sample_rate
                self._check_embeddings(emb, ts, batch, task, loaded)
                arrays = {"names": np.array(batch), "embeddings": emb.astype(np.float32)}
                if ts is not None:
                    arrays["timestamps"] = ts.astype(np.float32)
                tmp = chunks / f"batch-{i:06d}.tmp.npz"  # np.savez keeps a name ending in .npz
                np.savez(tmp, **arrays)
                chunk = chunks / f"batch-{i:06d}.npz"
                os.replace(tmp, chunk)
                # its size and checksum, written last: a chunk without a matching record is redone on resume
                atomic_write_json(_chunk_record(chunk), {"size": chunk.stat().st_size, "sha256": file_sha256(str(chunk))})
                bar.update(len(batch))
        bar.close()

    def _verified_chunks(self, chunks: Path, names: set[str], where: str) -> tuple[set[str], int]:
        """The clips held by this split's finished chunks, and the next free chunk index.  A chunk whose size
        or checksum does not match its record (truncated, overwritten, or written without one) is removed,
        with a one-line notice, and its clips are computed again."""
        done, next_index = set(), 0
        for path in sorted(chunks.glob("batch-*[0-9].npz")):
            record = _chunk_record(path)
            try:
                expect = json.loads(record.read_text())
                ok = path.stat().st_size == expect["size"] and file_sha256(str(path)) == expect["sha256"]
                if ok:
                    with np.load(path) as z:
                        held = set(z["names"].tolist())
                    ok = held <= names
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                self.log(f"{where}: {path.name} is damaged or incomplete; recomputing its clips")
                path.unlink()
                record.unlink(missing_ok=True)
                continue
            done |= held
            next_index = max(next_index, int(path.stem.split("-")[1]) + 1)
        return done, next_index

    def _check_embeddings(self, emb, ts, batch, task, loaded):
        where = f"{loaded.spec.module} on {task.name} (files {batch[:3]}{'...' if len(batch) > 3 else ''})"
        expected_ndim = 3 if task.is_event else 2
        if emb.ndim != expected_ndim or emb.shape[0] != len(batch):
            raise UserFacingError(f"{where}: embeddings of shape {emb.shape}, expected {expected_ndim}-D with {len(batch)} rows")
        if not np.isfinite(emb).all():
            raise UserFacingError(f"{where}: the module returned NaN or Inf embeddings")
        if ts is not None and ts.shape != emb.shape[:2]:
            raise UserFacingError(f"{where}: timestamps {ts.shape} do not match embeddings {emb.shape}")

    def _assemble_split(self, task, split, order, work, final):
        """Chunks -> heareval's split files, rows in heareval's order; temp names, then rename."""
        chunk_files = sorted((work / f".chunks-{split}").glob("batch-*[0-9].npz"))
        where = {}  # file -> (chunk index, row)
        frames, stamps = {}, {}
        dim = None
        for c, path in enumerate(chunk_files):
            with np.load(path) as z:
                names = z["names"].tolist()
                shape = z["embeddings"].shape
                ts = z["timestamps"] if task.is_event else None
            dim = shape[-1]
            for r, name in enumerate(names):
                where[name] = (c, r)
                frames[name] = shape[1] if task.is_event else 1
                if task.is_event:
                    stamps[name] = ts[r]
        missing = [n for n in order if n not in where]
        if missing:
            raise RuntimeError(f"internal: chunks of split {split} lack {missing[:5]}")
        offsets, total = {}, 0
        for name in order:
            offsets[name] = total
            total += frames[name]

        def fill(memmap):
            for path in chunk_files:
                with np.load(path) as z:
                    names, emb = z["names"].tolist(), z["embeddings"]
                for r, name in enumerate(names):
                    memmap[offsets[name] : offsets[name] + frames[name]] = emb[r]

        labels, filename_timestamps = [], []
        for name in order:
            if task.is_event:
                labels += labels_for_timestamps(task.splits[split][name], stamps[name])
                slug = str(final / split / name)
                filename_timestamps += [(slug, t) for t in stamps[name].tolist()]
            else:
                labels.append(task.splits[split][name])
        write_split_files(work, split, (total, dim), fill, labels, filename_timestamps if task.is_event else None)
        shutil.rmtree(work / f".chunks-{split}")


def _remove_temps(work: Path) -> None:
    """This process's half-written files in an unfinished task folder (the finished chunks stay)."""
    for tmp in list(work.rglob(f"*.tmp-{os.getpid()}")) + list(work.rglob("batch-*.tmp.npz")):
        tmp.unlink(missing_ok=True)


def _chunk_record(chunk: Path) -> Path:
    return chunk.with_name(chunk.name + ".json")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def format_summary(stats: list[ModuleStats]) -> str:
    lines = ["", f"{'module':40s} {'tasks':>11s} {'clips':>7s} {'audio h':>8s} {'wall s':>8s} {'audio s/s':>10s}"]
    for s in stats:
        rate = s.audio_seconds / s.compute_seconds if s.compute_seconds else float("nan")
        lines.append(
            f"{s.tag:40s} {s.tasks_done:>4d} new/{s.tasks_skipped:<2d}skip {s.clips:>7d} "
            f"{s.audio_seconds / 3600:>8.3f} {s.wall_seconds:>8.1f} {rate:>10.1f}"
        )
        if s.bad_files:
            lines.append(f"  skipped {len(s.bad_files)} bad file(s); listed in each task's {MANIFEST}")
    return "\n".join(lines)


def extract(tasks_dir: Path, out_dir: Path, modules: list[str], options: list[str], seeds: str | None = None,
            skip_bad: bool = False, max_batch_seconds: float = 120.0, progress: bool = True, log=print) -> list[ModuleStats]:
    """`hearscan extract`: `modules` (MODULE[=CHECKPOINT] strings; none: those the environment configures,
    else the weights-free default) with `options` ([MODULE:]KEY=VALUE strings) over every task under
    `tasks_dir`, into `out_dir`; with `seeds` ("0-9"), also the per-seed views under `out_dir/seeds/`."""
    seed_list = parse_seeds(seeds) if seeds else None
    if not modules:
        modules = [s.module + (f"={s.checkpoint}" if s.checkpoint else "") for s in configured_specs()]
    if not modules:
        warn_default_module()
        modules = [WEIGHTS_FREE_DEFAULT]
    specs = parse_specs(modules, options)
    stats = Extractor(out_dir, skip_bad=skip_bad, max_batch_seconds=max_batch_seconds, progress=progress,
                      log=log).run(tasks_dir, specs)
    if seed_list:
        for spec in specs:
            for task_dir in sorted((Path(out_dir) / spec.tag).iterdir()):
                if (task_dir / DONE).exists():
                    make_seed_views(task_dir, Path(out_dir) / "seeds" / spec.tag, seed_list)
        log(f"per-seed views for seeds {seed_list[0]}..{seed_list[-1]} under {Path(out_dir) / 'seeds'}")
    return stats


def warn_default_module() -> None:
    msg = ("no modules named and no weights configured (HEARSCAN_<MODULE>_CHECKPOINT, PT_AXLSTM_MODEL_DIR): "
           "extracting the weights-free default 'logmel'")
    warnings.warn(msg)
    print(f"warning: {msg}", file=sys.stderr)
