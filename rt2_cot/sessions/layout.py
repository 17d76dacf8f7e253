"""The on-disk contract of a session: LeRobot v3.0 paths, features, metadata I/O, locks, path checks.

A session folder is a LeRobot v3.0 dataset (`codebase_version: "v3.0"`):

    meta/info.json                                   fps, features (dtype/shape/names), totals, path templates
    meta/stats.json                                  per-feature min/max/mean/std/count/quantiles
    meta/tasks.parquet                               task string (index, named "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, dataset_from/to_index,
                                                     data/videos chunk+file, videos/<key>/from/to_timestamp,
                                                     stats/<feature>/<stat>, plus this project's columns
    data/chunk-000/file-000.parquet                  one row per step, episodes concatenated
    videos/<camera key>/chunk-000/file-000.mp4       episodes concatenated; frame i of episode e is at
                                                     from_timestamp(e) + i / fps

Timestamps follow LeRobot: `timestamp = frame_index / fps` (what LeRobot checks and seeks with); the
loop's wall-clock time since the episode started is kept in the extra column `wall_time_s`.

Depth (choice, documented in info.json under the feature's `info`): the D435 depth is stored as a
grey MP4 that both people and tools can open. Each pixel's depth is mapped linearly from
[depth.min_m, depth.max_m] to grey levels 1..255 and 0 means "no reading"; decoding inverts that
(about 7.5 mm per level at the default 0.1..2.0 m, plus compression error). It is a faithful
preview and a coarse metric record, not a replacement for a .bag when millimetres matter.

Files that are in progress live under `.journal/` (see `recorder.py`) and are ignored by LeRobot.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rt2_cot.errors import SessionError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
JOURNAL_DIR = ".journal"
LOCK_FILE = ".lock"

COLOR_KEY = "observation.images.color"
DEPTH_KEY = "observation.images.depth"
DEFAULT_CAMERA_KEYS = (COLOR_KEY, DEPTH_KEY)
DEFAULT_DEPTH_RANGE_M = (0.1, 2.0)

STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
TOKEN_NAMES = ["terminate", "dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
NO_TOKEN = -1  # action_tokens when the model's text could not be parsed (nothing moved)

# Per-step features other than videos: name -> (dtype, shape, names). LeRobot's five index columns
# first, then the robot's state and the action actually sent, then this project's extras.
STEP_FEATURES: dict[str, tuple[str, list[int], list[str] | None]] = {
    "timestamp": ("float32", [1], None),
    "frame_index": ("int64", [1], None),
    "episode_index": ("int64", [1], None),
    "index": ("int64", [1], None),
    "task_index": ("int64", [1], None),
    "observation.state": ("float32", [7], STATE_NAMES),
    "action": ("float32", [7], ACTION_NAMES),  # after the shield; a hold when nothing was sent
    "action_requested": ("float32", [7], ACTION_NAMES),  # before the shield; NaN when unparseable
    "action_tokens": ("int64", [8], TOKEN_NAMES),  # -1s when unparseable
    "action_sent": ("bool", [1], None),
    "terminate": ("bool", [1], None),
    "generated_text": ("string", [1], None),
    "plan": ("string", [1], None),
    "parse_error": ("string", [1], None),
    "shield_notes": ("string", [1], None),  # one note per line
    "latency_ms": ("float32", [1], None),
    "ttft_ms": ("float32", [1], None),  # NaN when the backend does not report it
    "replanned": ("bool", [1], None),
    "loop_hz": ("float32", [1], None),
    "wall_time_s": ("float64", [1], None),  # loop clock, seconds since the episode started
}
STATS_FEATURES = ("observation.state", "action", "action_requested", "latency_ms", "ttft_ms")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)

# Per-episode extras in meta/episodes beside LeRobot's own columns.
EPISODE_EXTRAS = (
    "instruction",
    "end_reason",
    "success",
    "operator_grade",
    "operator_note",
    "end_message",
    "policy",
    "episode_id",
    "started_at",
    "dropped_steps",
)
END_REASONS = ("terminate", "success", "step_limit", "stop", "estop", "error", "crash")
GRADES = ("pass", "fail")


# -- paths -----------------------------------------------------------------------------------------
def data_path(chunk: int, file: int) -> str:
    return DATA_PATH.format(chunk_index=chunk, file_index=file)


def video_path(key: str, chunk: int, file: int) -> str:
    return VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)


def episodes_path(chunk: int = 0, file: int = 0) -> str:
    return EPISODES_PATH.format(chunk_index=chunk, file_index=file)


def next_file(chunk: int, file: int) -> tuple[int, int]:
    """LeRobot's rule: files count up inside a chunk folder until it holds CHUNKS_SIZE files."""
    file += 1
    if file >= CHUNKS_SIZE:
        return chunk + 1, 0
    return chunk, file


def inside(root: Path, relative: str | Path) -> Path:
    """`root / relative`, refusing anything that resolves outside root (`..`, absolute, symlinks).

    Every file the reader opens goes through here, so a crafted info.json or a symlink planted in
    a session cannot make the console read or delete another folder.
    """
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise SessionError(f"refusing path {str(relative)!r}: it must stay inside {root}")
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise SessionError(f"refusing path {str(relative)!r}: it leads outside {root} (symlink?)")
    return target


def resolve_session(sessions_root: str | Path, name: str | Path) -> Path:
    """The folder of session `name` (a plain folder name) inside sessions_root, or SessionError.

    Names come from browsers: absolute paths, `..`, hidden or private (`_`) folders, nested paths
    and symlinks that leave the root are all rejected.
    """
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\x00" in text:
        raise SessionError(f"not a session name: {text!r} (use a folder name from `rt2-cot session list`)")
    if text.startswith((".", "_")):
        raise SessionError(f"not a session name: {text!r} (hidden and private folders are not sessions)")
    path = inside(Path(sessions_root), text)
    if not (path / INFO_PATH).is_file():
        raise SessionError(
            f"no session {text!r} in {sessions_root} (run `rt2-cot session list {sessions_root}`)"
        )
    return path


# -- locks -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def meta_lock(root: Path) -> Iterator[None]:
    """Exclusive lock for read-modify-write of a session's files (recorder, grading, deletion).

    flock on a fresh descriptor each time: it excludes other processes *and* other threads of
    this process, and the kernel drops it if the holder is killed.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- atomic writes ---------------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode())


def write_parquet(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def jsonable(obj: Any) -> Any:
    """Numpy and NaN-free copy for JSON (NaN/inf become null: JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -- metadata --------------------------------------------------------------------------------------
def read_info(root: Path) -> dict:
    path = root / INFO_PATH
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise SessionError(f"{root} is not a session: {INFO_PATH} is missing") from None
    except (OSError, ValueError) as exc:
        raise SessionError(
            f"{root}: {INFO_PATH} is unreadable ({exc}); restore it or delete the session"
        ) from None
    if not isinstance(info, dict) or "features" not in info or "fps" not in info:
        raise SessionError(f"{root}: {INFO_PATH} lacks fps/features; not a LeRobot dataset")
    return info


def new_info(fps: float, robot_type: str) -> dict:
    features = {name: {"dtype": d, "shape": s, "names": n} for name, (d, s, n) in STEP_FEATURES.items()}
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 0,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": fps_for_info(fps),
        "splits": {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }


def fps_for_info(fps: float) -> int | float:
    # LeRobot writes an int; keep fractional rates exact rather than rounding them away.
    return int(fps) if float(fps).is_integer() else float(fps)


def video_keys(info: dict) -> list[str]:
    return [k for k, f in info["features"].items() if f.get("dtype") == "video"]


def read_episodes(root: Path) -> Any:
    """The committed rows of meta/episodes as one DataFrame sorted by episode_index (empty when none)."""
    import pandas as pd

    folder = root / "meta" / "episodes"
    files = sorted(folder.glob("chunk-*/file-*.parquet")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame()
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(inside(root, f.relative_to(root))))
        except SessionError:
            raise
        except Exception as exc:
            raise SessionError(f"{root}: {f.relative_to(root)} is unreadable ({exc})") from None
    df = pd.concat(frames, ignore_index=True)
    # info.json is written last in a commit, so it is the commit point: rows beyond its
    # total_episodes belong to a commit that died half-way and will be redone by recovery.
    if (root / INFO_PATH).exists():
        df = df[df["episode_index"] < int(read_info(root).get("total_episodes", 0))]
    return df.sort_values("episode_index", kind="stable").reset_index(drop=True)


def read_tasks(root: Path) -> dict[str, int]:
    import pandas as pd

    path = root / TASKS_PATH
    if not path.exists():
        return {}
    df = pd.read_parquet(path)
    return {str(task): int(idx) for task, idx in zip(df.index, df["task_index"], strict=True)}


def write_tasks(root: Path, tasks: dict[str, int]) -> None:
    import pandas as pd
    import pyarrow as pa

    ordered = sorted(tasks.items(), key=lambda kv: kv[1])
    df = pd.DataFrame(
        {"task_index": [i for _, i in ordered]}, index=pd.Index([t for t, _ in ordered], name="task")
    )
    write_parquet(root / TASKS_PATH, pa.Table.from_pandas(df, preserve_index=True))


def episode_stats(values: np.ndarray) -> dict[str, Any]:
    """LeRobot's per-feature statistics over axis 0 (NaNs ignored; all-NaN dims give NaN)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    with np.errstate(all="ignore"), _quiet_nan_warnings():
        out: dict[str, Any] = {
            "min": np.nanmin(v, axis=0),
            "max": np.nanmax(v, axis=0),
            "mean": np.nanmean(v, axis=0),
            "std": np.nanstd(v, axis=0),
            "count": np.array([int(v.shape[0])]),
        }
        for q in QUANTILES:
            out[f"q{round(q * 100):02d}"] = np.nanquantile(v, q, axis=0)
    return out


@contextlib.contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# -- depth as grey video ---------------------------------------------------------------------------
def depth_to_grey(depth: np.ndarray, depth_scale_m: float, depth_range_m: tuple[float, float]) -> np.ndarray:
    """uint16 depth (0 = no reading) -> HxWx3 uint8 grey, levels 1..255 over the range, 0 = none."""
    lo, hi = depth_range_m
    d = depth.astype(np.float32) * float(depth_scale_m)
    level = 1.0 + 254.0 * (np.clip(d, lo, hi) - lo) / (hi - lo)
    grey = np.where(depth > 0, np.rint(level), 0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def grey_to_depth_m(image: np.ndarray, depth_range_m: tuple[float, float]) -> np.ndarray:
    """The inverse of `depth_to_grey`: metres as float32, NaN where there was no reading."""
    lo, hi = depth_range_m
    g = np.asarray(image, np.float32)
    if g.ndim == 3:
        g = g.mean(axis=2)
    d = lo + (g - 1.0) / 254.0 * (hi - lo)
    d[g < 0.5] = np.nan  # codec noise can lift a 0 to a fraction, never to a full level
    return d.astype(np.float32)
