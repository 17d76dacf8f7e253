"""Record control-loop episodes into a LeRobot v3.0 session folder without ever stalling the loop.

`SessionRecorder` is a loop subscriber. On the loop's thread it only copies the step's images,
turns the step into one plain row and appends both to an in-memory queue (microseconds; it never
waits on a lock held by disk I/O). A writer thread drains the queue into a per-episode journal:

    .journal/<episode>/episode.json     who/what/when, written when the episode starts
    .journal/<episode>/rows.jsonl       one JSON line per step, flushed after every line
    .journal/<episode>/<camera>.mp4     fragmented H.264, one fragment per keyframe (0.5 s default)
    .journal/<episode>/ended.json       written when the loop reports the end

When the episode ends, the journal is committed into the dataset (data parquet, concatenated
videos, meta) and deleted. If the process dies (kill -9, power cut), `recover(root)` on the next
start commits what the journal holds: rows are cut to the frames every video can still decode, so
the loss is the last unfinished fragment plus whatever was still queued, and the episode's
`end_reason` is "crash". Commits are idempotent (rows and video frames beyond what meta/ records
are dropped first), so a crash in the middle of a commit is recovered the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from rt2_cot.errors import SessionError
from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, LoopEvent, StepRecord, StreamEvent
from rt2_cot.sessions import layout as L
from rt2_cot.sessions.video import (
    StreamingEncoder,
    concat,
    packet_count,
    same_codec,
    video_info,
)

OWNER_LOCK = ".owner"


def step_row(record: StepRecord) -> dict[str, Any]:
    """One StepRecord -> the journal row (everything but LeRobot's index columns and images)."""
    out = record.output
    arm = record.arm_state
    state = [*(float(v) for v in arm.ee_xyz_m), *(float(v) for v in arm.ee_rpy_rad), float(arm.gripper)]
    sent = record.command_sent
    if sent is None:
        # Nothing was sent: the arm held still with its gripper as it was. Logging the hold keeps
        # `action` a true record of what the robot did and keeps NaNs out of training data.
        action = [0.0] * 6 + [float(arm.gripper)]
    else:
        action = [*map(float, sent.delta_xyz_m), *map(float, sent.delta_rpy_rad), float(sent.gripper)]
    req = out.command
    requested = (
        [*map(float, req.delta_xyz_m), *map(float, req.delta_rpy_rad), float(req.gripper)]
        if req is not None
        else [float("nan")] * 7
    )
    tokens = (
        [int(t) for t in out.tokens] if out.tokens is not None and len(out.tokens) == 8 else [L.NO_TOKEN] * 8
    )
    terminate = bool(sent.terminate) if sent is not None else bool(req is not None and req.terminate)
    return {
        "episode_id": record.episode_id,
        "step": int(record.step),
        "instruction": record.instruction,
        "observation.state": state,
        "action": action,
        "action_requested": requested,
        "action_tokens": tokens,
        "action_sent": sent is not None,
        "terminate": terminate,
        "generated_text": out.text or "",
        "plan": out.plan or "",
        "parse_error": out.error or "",
        "shield_notes": "\n".join(record.shield_notes),
        "latency_ms": float(out.latency_ms),
        "ttft_ms": float("nan") if out.ttft_ms is None else float(out.ttft_ms),
        "replanned": bool(out.replanned),
        "loop_hz": float(record.loop_hz),
        "wall_time_s": float(record.timestamp_s),
    }


class SessionRecorder:
    """Control-loop subscriber that records every episode it sees into the session at `root`.

    `camera_keys[0]` receives the colour image, `camera_keys[1]` (if given) the depth as grey video.
    At most `max_pending_steps` steps wait for the writer; beyond that new steps are dropped (and
    counted in the episode's `dropped_steps`) rather than letting memory grow or the loop wait.
    """

    def __init__(
        self,
        root: str | Path,
        fps: float,
        camera_keys: tuple[str, ...] = L.DEFAULT_CAMERA_KEYS,
        *,
        robot_type: str = "rt2_cot",
        max_pending_steps: int = 150,
        keyframe_s: float = 0.5,
        crf: int = 23,
        preset: str = "ultrafast",
        depth_range_m: tuple[float, float] = L.DEFAULT_DEPTH_RANGE_M,
    ) -> None:
        if not fps or fps <= 0:
            raise SessionError(f"recording needs a positive fps, got {fps}")
        if not camera_keys or len(camera_keys) > 2:
            raise SessionError("camera_keys must name the colour stream and optionally the depth stream")
        self.root = Path(root)
        self.fps = float(fps)
        self.camera_keys = tuple(camera_keys)
        self.robot_type = robot_type
        self.max_pending_steps = max_pending_steps
        self.keyframe_s, self.crf, self.preset = keyframe_s, crf, preset
        self.depth_range_m = (float(depth_range_m[0]), float(depth_range_m[1]))
        self.root.mkdir(parents=True, exist_ok=True)
        self._owner_fd = _claim_owner(self.root)
        try:
            _recover_journals(self.root)
            with L.meta_lock(self.root):
                if (self.root / L.INFO_PATH).exists():
                    info = L.read_info(self.root)
                    if abs(float(info["fps"]) - self.fps) > 1e-6:
                        raise SessionError(
                            f"session {self.root} was recorded at {info['fps']} fps, not {self.fps}; "
                            "record into a new session folder"
                        )
                    keys = L.video_keys(info)
                    if keys:
                        self.camera_keys = tuple(keys)
                else:
                    L.write_json(self.root / L.INFO_PATH, L.new_info(self.fps, robot_type))
        except BaseException:
            os.close(self._owner_fd)
            raise
        self._queue: deque[tuple] = deque()
        self._cond = threading.Condition()
        self._pending_steps = 0
        self._closed = False
        self.dropped_steps = 0
        self._dropped_by_episode: dict[str, int] = {}
        self.errors: list[str] = []
        self.committed: list[int] = []  # episode indices this recorder wrote
        self._episode: _JournalEpisode | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"session-writer:{self.root.name}", daemon=True
        )
        self._thread.start()

    # -- the loop side: enqueue only ----------------------------------------------------------------
    def __call__(self, event: LoopEvent) -> None:
        if isinstance(event, StreamEvent) or self._closed:
            return
        if isinstance(event, StepRecord):
            if self._pending_steps >= self.max_pending_steps:
                self.dropped_steps += 1
                self._dropped_by_episode[event.episode_id] = (
                    self._dropped_by_episode.get(event.episode_id, 0) + 1
                )
                return
            frame = event.frame
            item: tuple = (
                "step",
                step_row(event),
                np.array(frame.color, dtype=np.uint8, copy=True),
                None if frame.depth is None else np.array(frame.depth, copy=True),
                float(frame.depth_scale_m),
            )
            self._put(item, step=True)
        elif isinstance(event, EpisodeStarted):
            self._put(("start", event))
        elif isinstance(event, EpisodeEnded):
            self._put(("end", event, self._dropped_by_episode.pop(event.episode_id, 0)))

    def _put(self, item: tuple, step: bool = False) -> None:
        with self._cond:
            self._queue.append(item)
            if step:
                self._pending_steps += 1
            self._cond.notify()

    # -- control ------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Steps queued but not yet written to the journal."""
        return self._pending_steps

    @property
    def current_episode_index(self) -> int | None:
        """The index the episode being recorded will get (None between episodes)."""
        ep = self._episode
        return None if ep is None else ep.provisional_index

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (journal or committed). False on timeout."""
        done = threading.Event()
        self._put(("sync", done))
        return done.wait(timeout)

    def set_grade(self, episode_index: int, grade: str | None, note: str = "") -> None:
        """Operator verdict for an episode; works while it is still being recorded, too."""
        _check_grade(grade)
        ep = self._episode
        if ep is not None and ep.provisional_index == int(episode_index):
            self._put(("grade", int(episode_index), grade, note))
            return
        set_grade(self.root, episode_index, grade, note)

    def close(self, timeout: float = 60.0) -> None:
        """Finish writing (an episode still open is committed with end_reason "stop") and stop."""
        if self._closed:
            return
        self._put(("close",))
        self._closed = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("session writer for {} did not finish within {} s", self.root, timeout)
            return
        os.close(self._owner_fd)

    def __enter__(self) -> SessionRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                item = self._queue.popleft()
            kind = item[0]
            try:
                if kind == "step":
                    self._write_step(*item[1:])
                elif kind == "start":
                    self._start(item[1])
                elif kind == "end":
                    self._end(item[1], item[2])
                elif kind == "grade":
                    if self._episode is not None:
                        self._episode.set_grade(item[2], item[3])
                elif kind == "sync":
                    item[1].set()
                elif kind == "close":
                    if self._episode is not None:
                        self._finish("stop", None, "the recorder was closed during the episode")
                    return
            except Exception as exc:  # disk full, encoder failure: log, keep the loop and recorder alive
                logger.exception("session recorder: {} failed: {}", kind, exc)
                self.errors.append(f"{kind}: {exc}")
                if kind in ("start", "step") and self._episode is not None:
                    self._episode.abandon()
                    self._episode = None
            finally:
                if kind == "step":
                    with self._cond:
                        self._pending_steps -= 1

    def _start(self, event: EpisodeStarted) -> None:
        if self._episode is not None:
            self._finish("error", None, "a new episode started before this one reported its end")
        info_eps = _committed_count(self.root)
        self._episode = _JournalEpisode.create(
            self.root,
            fps=self.fps,
            provisional_index=info_eps,
            episode_id=event.episode_id,
            instruction=event.instruction,
            policy=event.policy,
            started_at=event.started_at,
            extras=event.extras,
            camera_keys=self.camera_keys,
            depth_range_m=self.depth_range_m,
            encoder_options={"keyframe_s": self.keyframe_s, "crf": self.crf, "preset": self.preset},
        )

    def _write_step(
        self, row: dict, color: np.ndarray, depth: np.ndarray | None, depth_scale_m: float
    ) -> None:
        ep = self._episode
        if ep is None or ep.episode_id != row["episode_id"]:
            # A step without EpisodeStarted (single steps from the console): open an episode for it.
            self._start(
                EpisodeStarted(
                    episode_id=row["episode_id"],
                    instruction=row["instruction"],
                    policy="",
                    started_at=time.time() - row["wall_time_s"],
                )
            )
            ep = self._episode
        assert ep is not None
        ep.add(row, color, depth, depth_scale_m)

    def _end(self, event: EpisodeEnded, dropped: int) -> None:
        ep = self._episode
        if ep is None or ep.episode_id != event.episode_id:
            return  # an episode we never saw a step of: nothing to record
        ep.dropped_steps += dropped
        self._finish(event.reason, event.success, event.message)

    def _finish(self, reason: str, success: bool | None, message: str) -> None:
        ep = self._episode
        self._episode = None
        if ep is None:
            return
        ep.end(reason, success, message)
        index = commit_journal(self.root, ep.dir)
        if index is not None:
            self.committed.append(index)


class _JournalEpisode:
    """The in-progress episode on disk (see the module docstring)."""

    def __init__(self, directory: Path, meta: dict, encoder_options: dict) -> None:
        self.dir = directory
        self.meta = meta
        self.episode_id = meta["episode_id"]
        self.provisional_index = meta["provisional_index"]
        self.dropped_steps = 0
        self._encoder_options = encoder_options
        self._encoders: dict[str, StreamingEncoder] = {}
        self._rows = open(directory / "rows.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in end())
        self.frames = 0
        self._last_sync = time.monotonic()

    @classmethod
    def create(
        cls, root: Path, *, fps: float, provisional_index: int, encoder_options: dict, **fields: Any
    ) -> _JournalEpisode:
        directory = root / L.JOURNAL_DIR / f"ep-{time.time_ns():020d}"
        directory.mkdir(parents=True)
        meta = {
            "fps": fps,
            "provisional_index": provisional_index,
            **fields,
            "camera_keys": list(fields["camera_keys"]),
            "depth_range_m": list(fields["depth_range_m"]),
        }
        L.write_json(directory / "episode.json", meta)
        return cls(directory, meta, encoder_options)

    def add(self, row: dict, color: np.ndarray, depth: np.ndarray | None, depth_scale_m: float) -> None:
        keys = self.meta["camera_keys"]
        images = {keys[0]: color}
        if len(keys) > 1:
            if depth is None:
                grey = np.zeros_like(color)  # no depth this step: "no reading" everywhere
            else:
                grey = L.depth_to_grey(depth, depth_scale_m, tuple(self.meta["depth_range_m"]))
            images[keys[1]] = grey
        for key, image in images.items():
            enc = self._encoders.get(key)
            if enc is None:
                h, w = image.shape[:2]
                enc = StreamingEncoder(
                    self.dir / _video_file(key), self.meta["fps"], w, h, **self._encoder_options
                )
                self._encoders[key] = enc
            enc.add(image)
        # The row goes after its frames: on a crash rows can only outnumber frames, never the reverse,
        # and recovery cuts rows to the frames that decode.
        self._rows.write(json.dumps(row) + "\n")
        self._rows.flush()  # enough for kill -9: the kernel has the bytes
        now = time.monotonic()
        if now - self._last_sync >= 1.0:  # and at most a second lost to a power cut
            os.fsync(self._rows.fileno())
            self._last_sync = now
        self.frames += 1

    def set_grade(self, grade: str | None, note: str) -> None:
        L.write_json(self.dir / "grade.json", {"operator_grade": grade, "operator_note": note})

    def end(self, reason: str, success: bool | None, message: str) -> None:
        for enc in self._encoders.values():
            enc.close()
        self._rows.close()
        L.write_json(
            self.dir / "ended.json",
            {
                "end_reason": reason,
                "success": success,
                "end_message": message,
                "dropped_steps": self.dropped_steps,
            },
        )

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.end("error", None, "the recorder failed while writing this episode")


def _video_file(key: str) -> str:
    return key.replace("/", "_") + ".mp4"


def _claim_owner(root: Path) -> int:
    (root / L.JOURNAL_DIR).mkdir(parents=True, exist_ok=True)
    fd = os.open(root / L.JOURNAL_DIR / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SessionError(
            f"session {root} is being recorded by another recorder; record into a new folder"
        ) from None
    return fd


def _committed_count(root: Path) -> int:
    try:
        return int(L.read_info(root).get("total_episodes", 0))
    except SessionError:
        return 0


# -- recovery -----------------------------------------------------------------------------------------
def recover(root: str | Path) -> list[int]:
    """Commit episodes a crashed recorder left in the journal. Returns the episode indices written.

    Safe to call on any session at any time: a session another live recorder is writing is left
    alone (its owner lock is held), and a clean session is untouched.
    """
    root = Path(root)
    if not (root / L.JOURNAL_DIR).is_dir():
        return []
    try:
        fd = _claim_owner(root)
    except SessionError:
        logger.info("session {} is being recorded right now; not recovering it", root)
        return []
    try:
        return _recover_journals(root)
    finally:
        os.close(fd)


def _recover_journals(root: Path) -> list[int]:
    written = []
    journal = root / L.JOURNAL_DIR
    for directory in sorted(p for p in journal.iterdir() if p.is_dir()):
        index = commit_journal(root, directory)
        if index is not None:
            written.append(index)
            logger.warning("recovered episode {} of session {} from its journal", index, root)
    return written


def _read_rows(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # the line being written when the process died
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return rows


def commit_journal(root: Path, directory: Path) -> int | None:
    """Move one journaled episode into the dataset; returns its episode_index (None if empty)."""
    try:
        meta = json.loads((directory / "episode.json").read_text())
    except (OSError, ValueError):
        logger.warning("dropping journal {}: its episode.json is unreadable", directory)
        shutil.rmtree(directory, ignore_errors=True)
        return None
    ended_path = directory / "ended.json"
    ended = json.loads(ended_path.read_text()) if ended_path.exists() else None
    grade_path = directory / "grade.json"
    grade = json.loads(grade_path.read_text()) if grade_path.exists() else {}
    fps = float(meta["fps"])
    rows = _read_rows(directory / "rows.jsonl")
    keys = list(meta["camera_keys"])
    frames = [
        packet_count(directory / _video_file(k), fps) if (directory / _video_file(k)).exists() else 0
        for k in keys
    ]
    n = min([len(rows), *frames])
    if n == 0:
        shutil.rmtree(directory, ignore_errors=True)
        return None
    if ended is None:
        ended = {
            "end_reason": "crash",
            "success": None,
            "end_message": f"recovered after the recorder stopped unexpectedly; kept {n} of {len(rows)} logged steps",
            "dropped_steps": 0,
        }
    elif n < len(rows):
        logger.warning(
            "episode journal {}: {} rows but only {} video frames; keeping {}", directory, len(rows), n, n
        )
    with L.meta_lock(root):
        index = _append_episode(root, directory, meta, ended, grade, rows[:n], keys, fps)
    shutil.rmtree(directory, ignore_errors=True)
    return index


def _append_episode(
    root: Path,
    directory: Path,
    meta: dict,
    ended: dict,
    grade: dict,
    rows: list[dict],
    keys: list[str],
    fps: float,
) -> int:
    import pandas as pd

    info = L.read_info(root) if (root / L.INFO_PATH).exists() else L.new_info(fps, "rt2_cot")
    episodes = L.read_episodes(root)
    ep_index = len(episodes)
    start = int(episodes["dataset_to_index"].max()) if ep_index else 0
    n = len(rows)
    tasks = L.read_tasks(root)
    instruction = str(meta.get("instruction", ""))
    if instruction not in tasks:
        tasks[instruction] = len(tasks)
    task_index = tasks[instruction]

    # Data: append to the last file (dropping rows meta does not know: a crashed earlier commit).
    chunk, file = (
        (int(episodes["data/chunk_index"].iloc[-1]), int(episodes["data/file_index"].iloc[-1]))
        if ep_index
        else (0, 0)
    )
    target = root / L.data_path(chunk, file)
    if target.exists() and target.stat().st_size > L.DATA_FILES_SIZE_IN_MB * 1024 * 1024:
        chunk, file = L.next_file(chunk, file)
        target = root / L.data_path(chunk, file)
    new = _rows_table(rows, ep_index, start, task_index, fps)
    if target.exists():
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        known = episodes[(episodes["data/chunk_index"] == chunk) & (episodes["data/file_index"] == file)]
        old = pq.read_table(target)
        old = old.filter(
            pc.is_in(
                old["episode_index"], pa.array(known["episode_index"].astype("int64").tolist(), pa.int64())
            )
        )
        new = pa.concat_tables([old, new.cast(old.schema)]) if old.num_rows else new
    L.write_parquet(target, new)

    record: dict[str, Any] = {
        "episode_index": ep_index,
        "tasks": [instruction],
        "length": n,
        "data/chunk_index": chunk,
        "data/file_index": file,
        "dataset_from_index": start,
        "dataset_to_index": start + n,
    }
    # Videos: append this episode's packets to each camera's current file.
    for key in keys:
        src = directory / _video_file(key)
        vchunk, vfile, used = 0, 0, 0
        col = f"videos/{key}/chunk_index"
        if ep_index and col in episodes:
            vchunk, vfile = int(episodes[col].iloc[-1]), int(episodes[f"videos/{key}/file_index"].iloc[-1])
            in_file = episodes[(episodes[col] == vchunk) & (episodes[f"videos/{key}/file_index"] == vfile)]
            used = round(float(in_file[f"videos/{key}/to_timestamp"].max()) * fps) if len(in_file) else 0
        vtarget = root / L.video_path(key, vchunk, vfile)
        if (
            used
            and vtarget.exists()
            and (
                vtarget.stat().st_size > L.VIDEO_FILES_SIZE_IN_MB * 1024 * 1024
                or not same_codec(vtarget, src)
            )
        ):
            vchunk, vfile = L.next_file(vchunk, vfile)
            vtarget, used = root / L.video_path(key, vchunk, vfile), 0
        pieces = ([(vtarget, 0, used)] if used else []) + [(src, 0, n)]
        copied = concat(vtarget, pieces, fps)
        if copied[-1] != n or (used and copied[0] != used):
            raise SessionError(f"{key}: expected to append {n} frames after {used}, copied {copied}")
        record[f"videos/{key}/chunk_index"] = vchunk
        record[f"videos/{key}/file_index"] = vfile
        record[f"videos/{key}/from_timestamp"] = used / fps
        record[f"videos/{key}/to_timestamp"] = (used + n) / fps
        feature = info["features"].get(key) or {}
        vinfo = video_info(vtarget)
        if key == L.DEPTH_KEY or (len(keys) > 1 and key == keys[1]):
            lo, hi = meta.get("depth_range_m", L.DEFAULT_DEPTH_RANGE_M)
            vinfo.update(
                {
                    "depth.encoding": "grey8-linear",
                    "depth.min_m": lo,
                    "depth.max_m": hi,
                    "depth.no_reading": 0,
                }
            )
        feature.update(
            {
                "dtype": "video",
                "shape": [vinfo["video.height"], vinfo["video.width"], 3],
                "names": ["height", "width", "channels"],
                "info": vinfo,
            }
        )
        info["features"][key] = feature
        for stat, value in _image_stats(src, fps, n).items():
            record[f"stats/{key}/{stat}"] = value.tolist()

    for name in L.STATS_FEATURES:
        values = np.array(
            [r[name] if isinstance(r[name], list) else [r[name]] for r in rows], dtype=np.float64
        )
        for stat, value in L.episode_stats(values).items():
            record[f"stats/{name}/{stat}"] = value.tolist()
    record.update(
        {
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            "instruction": instruction,
            "end_reason": str(ended.get("end_reason", "error")),
            "success": ended.get("success"),
            "operator_grade": grade.get("operator_grade"),
            "operator_note": grade.get("operator_note") or "",
            "end_message": str(ended.get("end_message") or ""),
            "policy": str(meta.get("policy") or ""),
            "episode_id": str(meta.get("episode_id") or ""),
            "started_at": float(meta.get("started_at") or 0.0),
            "dropped_steps": int(ended.get("dropped_steps") or 0),
        }
    )
    episodes = (
        pd.concat([episodes, pd.DataFrame([record])], ignore_index=True)
        if ep_index
        else pd.DataFrame([record])
    )
    write_episodes(root, episodes)
    L.write_tasks(root, tasks)
    write_stats(root, info, episodes)
    total = start + n
    info.update(
        {
            "total_episodes": ep_index + 1,
            "total_frames": total,
            "total_tasks": len(tasks),
            "splits": {"train": f"0:{ep_index + 1}"},
        }
    )
    L.write_json(root / L.INFO_PATH, info)  # last: until this lands, readers see the old dataset
    return ep_index


def _rows_table(rows: list[dict], ep_index: int, start: int, task_index: int, fps: float):  # -> pa.Table
    import pyarrow as pa

    n = len(rows)
    columns: dict[str, Any] = {
        "timestamp": pa.array(np.arange(n, dtype=np.float64) / fps, pa.float32()),
        "frame_index": pa.array(np.arange(n), pa.int64()),
        "episode_index": pa.array(np.full(n, ep_index), pa.int64()),
        "index": pa.array(np.arange(start, start + n), pa.int64()),
        "task_index": pa.array(np.full(n, task_index), pa.int64()),
    }
    for name, (dtype, shape, _names) in L.STEP_FEATURES.items():
        if name in columns:
            continue
        values = [r[name] for r in rows]
        columns[name] = _arrow_column(values, dtype, shape)
    return pa.table(columns)


def _arrow_column(values: list, dtype: str, shape: list[int]):  # -> pa.Array
    import pyarrow as pa

    types = {
        "float32": pa.float32(),
        "float64": pa.float64(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
        "string": pa.string(),
    }
    t = types[dtype]
    if shape == [1]:
        return pa.array(values, t)
    # Fixed-size lists: what LeRobot's `datasets` Sequence(length=N) features map to.
    flat = pa.array(np.asarray(values).reshape(-1).tolist(), t)
    return pa.FixedSizeListArray.from_arrays(flat, shape[0])


def _image_stats(path: Path, fps: float, n: int, samples: int = 12) -> dict[str, np.ndarray]:
    """LeRobot-style per-channel image stats (values in 0..1, shape 3x1x1) from a few frames.

    Only keyframes are decoded (one per `keyframe_s`), which keeps a commit cheap on long episodes.
    """
    from rt2_cot.sessions.video import decode_keyframes

    images = decode_keyframes(path)
    step = max(1, len(images) // samples)
    picked = [img[::4, ::4].reshape(-1, 3).astype(np.float64) / 255.0 for img in images[::step]]
    px = np.concatenate(picked) if picked else np.zeros((1, 3))
    return {
        "min": px.min(axis=0).reshape(3, 1, 1),
        "max": px.max(axis=0).reshape(3, 1, 1),
        "mean": px.mean(axis=0).reshape(3, 1, 1),
        "std": px.std(axis=0).reshape(3, 1, 1),
        "count": np.array([n]),
    }


def write_episodes(root: Path, episodes: Any) -> None:
    """All episode rows into meta/episodes/chunk-000/file-000.parquet (sessions stay small)."""
    import pyarrow as pa

    df = episodes.copy()
    df["meta/episodes/chunk_index"] = 0
    df["meta/episodes/file_index"] = 0
    # Nullable columns that pandas would otherwise store as object/float: make their types explicit.
    df["success"] = df["success"].astype("boolean")
    df["operator_grade"] = df["operator_grade"].astype("string")
    table = pa.Table.from_pandas(df, preserve_index=False)
    L.write_parquet(root / L.episodes_path(0, 0), table)


def write_stats(root: Path, info: dict, episodes: Any) -> None:
    """meta/stats.json: exact stats of the numeric step features, pooled image stats per camera."""
    import pyarrow.parquet as pq

    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    stats: dict[str, Any] = {}
    if files:
        cols = {name: [] for name in L.STATS_FEATURES}
        for f in files:
            t = pq.read_table(f, columns=list(L.STATS_FEATURES))
            for name in L.STATS_FEATURES:
                v = t[name].to_pylist()
                cols[name].extend(x if isinstance(x, list) else [x] for x in v)
        for name, values in cols.items():
            stats[name] = L.episode_stats(np.array(values, dtype=np.float64))
    for key in L.video_keys(info):
        prefix = f"stats/{key}/"
        if f"{prefix}mean" not in episodes:
            continue
        counts = np.array([float(np.asarray(c).reshape(-1)[0]) for c in episodes[f"{prefix}count"]])
        means = np.stack([np.asarray(_nested(m), np.float64) for m in episodes[f"{prefix}mean"]])
        stds = np.stack([np.asarray(_nested(s), np.float64) for s in episodes[f"{prefix}std"]])
        w = (counts / counts.sum()).reshape(-1, 1, 1, 1)
        mean = (w * means).sum(axis=0)
        var = (w * (stds**2 + (means - mean) ** 2)).sum(axis=0)
        stats[key] = {
            "min": np.min(np.stack([np.asarray(_nested(m)) for m in episodes[f"{prefix}min"]]), axis=0),
            "max": np.max(np.stack([np.asarray(_nested(m)) for m in episodes[f"{prefix}max"]]), axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(counts.sum())]),
        }
    L.write_json(root / L.STATS_PATH, stats)


def _nested(value: Any) -> Any:
    """Parquet gives nested lists back as arrays of arrays; make them plain nested lists."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_nested(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_nested(v) for v in value]
    return value


# -- grading ------------------------------------------------------------------------------------------
def _check_grade(grade: str | None) -> None:
    if grade is not None and grade not in L.GRADES:
        raise SessionError(f"grade must be 'pass', 'fail' or empty, got {grade!r}")


def set_grade(root: str | Path, episode_index: int, grade: str | None, note: str = "") -> None:
    """Record the operator's verdict ("pass"/"fail"/None) and note for one committed episode."""
    _check_grade(grade)
    root = Path(root)
    with L.meta_lock(root):
        episodes = L.read_episodes(root)
        hit = episodes.index[episodes["episode_index"] == int(episode_index)] if len(episodes) else []
        if len(hit) == 0:
            raise SessionError(
                f"episode {episode_index} is not in session {root.name} ({len(episodes)} episodes)"
            )
        episodes["operator_grade"] = episodes["operator_grade"].astype(object)
        episodes.loc[hit[0], "operator_grade"] = grade
        episodes.loc[hit[0], "operator_note"] = str(note or "")
        write_episodes(root, episodes)
