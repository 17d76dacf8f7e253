"""Validate a session folder against the LeRobot v3.0 layout and this project's extra columns.

`check_session(root)` never raises for a broken dataset; it returns every problem it finds so the
operator sees all of them at once (`rt2-cot session check DIR`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rt2_cot.errors import SessionError
from rt2_cot.sessions import layout as L

TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobot's default tolerance_s


@dataclass
class CheckReport:
    root: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    episodes: int = 0
    frames: int = 0
    video_frames: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.root,
            "ok": self.ok,
            "episodes": self.episodes,
            "frames": self.frames,
            "video_frames": self.video_frames,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def check_session(root: str | Path, *, decode: bool = False) -> CheckReport:
    """Every problem found in the session at `root` (empty `problems` means LeRobot can load it).

    Video frame counts come from demuxing (fast); `decode=True` also decodes every frame.
    """
    root = Path(root)
    report = CheckReport(root=str(root))
    if not root.is_dir():
        report.problems.append(f"{root} is not a folder")
        return report
    try:
        _check(root, report, decode)
    except SessionError as exc:
        report.problems.append(str(exc))
    except Exception as exc:  # a corrupt file can fail in many ways; all of them mean "broken"
        report.problems.append(f"unreadable: {type(exc).__name__}: {exc}")
    return report


def _check(root: Path, report: CheckReport, decode: bool) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    from rt2_cot.sessions.video import decode_range, packet_count

    problems = report.problems
    info = L.read_info(root)
    if info.get("codebase_version") != L.CODEBASE_VERSION:
        problems.append(f"info.json codebase_version is {info.get('codebase_version')!r}, expected 'v3.0'")
    fps = float(info.get("fps") or 0)
    if fps <= 0:
        problems.append("info.json fps must be positive")
        return
    features: dict = info["features"]
    for name, feat in features.items():
        if not isinstance(feat, dict) or "dtype" not in feat or "shape" not in feat:
            problems.append(f"feature {name!r} lacks dtype/shape")
    for name in L.STEP_FEATURES:
        if name not in features:
            problems.append(f"feature {name!r} is missing from info.json")
    video_keys = L.video_keys(info)
    journal = root / L.JOURNAL_DIR
    if journal.is_dir() and any(p.is_dir() for p in journal.iterdir()):
        report.warnings.append(
            "an episode is being recorded or was cut short by a crash (run `rt2-cot session recover`)"
        )

    episodes = L.read_episodes(root)
    report.episodes = len(episodes)
    total_eps = int(info.get("total_episodes", -1))
    total_frames = int(info.get("total_frames", -1))
    if total_eps != len(episodes):
        problems.append(f"info.json says {total_eps} episodes, meta/episodes has {len(episodes)}")
    if len(episodes) == 0:
        if total_frames not in (0, -1):
            problems.append(f"info.json says {total_frames} frames but there are no episodes")
        return
    for col in (
        "episode_index",
        "length",
        "dataset_from_index",
        "dataset_to_index",
        "data/chunk_index",
        "data/file_index",
        "tasks",
    ):
        if col not in episodes:
            problems.append(f"meta/episodes lacks column {col!r}")
    if problems:
        return
    idx = episodes["episode_index"].astype(int).tolist()
    if idx != list(range(len(idx))):
        problems.append(f"episode_index must run 0..{len(idx) - 1} without gaps, got {idx}")
    expected_from = 0
    for ep in episodes.to_dict("records"):
        e, n = int(ep["episode_index"]), int(ep["length"])
        if n <= 0:
            problems.append(f"episode {e} has length {n}")
        if (
            int(ep["dataset_from_index"]) != expected_from
            or int(ep["dataset_to_index"]) - int(ep["dataset_from_index"]) != n
        ):
            problems.append(
                f"episode {e}: dataset_from/to_index {ep['dataset_from_index']}..{ep['dataset_to_index']} "
                f"do not follow on from {expected_from} with length {n}"
            )
        expected_from = int(ep["dataset_from_index"]) + n
        if ep.get("operator_grade") not in (None, *L.GRADES) and not pd.isna(ep.get("operator_grade")):
            problems.append(
                f"episode {e}: operator_grade {ep.get('operator_grade')!r} is not pass/fail/empty"
            )
        if str(ep.get("end_reason")) not in L.END_REASONS:
            problems.append(f"episode {e}: end_reason {ep.get('end_reason')!r} is not one of {L.END_REASONS}")
    if total_frames != int(episodes["length"].sum()):
        problems.append(
            f"info.json says {total_frames} frames, episodes add up to {int(episodes['length'].sum())}"
        )

    # Tasks.
    tasks = L.read_tasks(root)
    if not tasks:
        problems.append("meta/tasks.parquet is missing or empty")
    if len(tasks) != int(info.get("total_tasks", -1)):
        problems.append(f"info.json says {info.get('total_tasks')} tasks, tasks.parquet has {len(tasks)}")

    # Data files: schema, row counts, indices, timestamps.
    expected_cols = {name for name, f in features.items() if f.get("dtype") != "video"}
    data_files = sorted(
        {
            (int(c), int(f))
            for c, f in zip(episodes["data/chunk_index"], episodes["data/file_index"], strict=True)
        }
    )
    frames = []
    for chunk, file in data_files:
        rel = L.data_path(chunk, file)
        path = L.inside(root, rel)
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        try:
            table = pq.read_table(path)
        except Exception as exc:
            problems.append(f"{rel} is not a readable parquet file ({exc})")
            continue
        missing = expected_cols - set(table.column_names)
        if missing:
            problems.append(f"{rel} lacks columns {sorted(missing)}")
            continue
        for name in expected_cols:
            shape = features[name]["shape"]
            col = table[name]
            if shape != [1]:
                width = getattr(col.type, "list_size", None)
                if width is not None and width != shape[0]:
                    problems.append(f"{rel}: {name} has width {width}, info.json says {shape[0]}")
        frames.append(
            table.select(
                ["index", "episode_index", "frame_index", "timestamp", "task_index", "action_tokens"]
            ).to_pandas()
        )
    if problems:
        return
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    report.frames = len(df)
    if len(df) != total_frames:
        problems.append(f"data files hold {len(df)} frames, info.json says {total_frames}")
    tokens = np.stack(df["action_tokens"].to_numpy()) if len(df) else np.zeros((0, 8))
    if tokens.size and (tokens.min() < L.NO_TOKEN or tokens.max() > 255):
        problems.append("action_tokens outside -1..255")
    if len(df) and set(df["task_index"].unique()) - set(tasks.values()):
        problems.append("task_index values not in tasks.parquet")
    for ep in episodes.to_dict("records"):
        e, n = int(ep["episode_index"]), int(ep["length"])
        rows = df[df["episode_index"] == e].sort_values("frame_index")
        if len(rows) != n:
            problems.append(f"episode {e}: {len(rows)} data rows, meta says {n}")
            continue
        if rows["frame_index"].tolist() != list(range(n)):
            problems.append(f"episode {e}: frame_index is not 0..{n - 1}")
        if rows["index"].tolist() != list(range(int(ep["dataset_from_index"]), int(ep["dataset_to_index"]))):
            problems.append(f"episode {e}: index does not match dataset_from/to_index")
        drift = np.abs(rows["timestamp"].to_numpy(np.float64) - np.arange(n) / fps)
        if n and drift.max() > TIMESTAMP_TOLERANCE_S + 1e-6 * n / fps:
            problems.append(
                f"episode {e}: timestamps drift from frame_index/fps by up to {drift.max():.4f} s"
            )

    # Videos: every episode's range must hold exactly `length` frames.
    for key in video_keys:
        total = 0
        for ep in episodes.to_dict("records"):
            e, n = int(ep["episode_index"]), int(ep["length"])
            cols = [
                f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
            ]
            if any(c not in ep or ep[c] is None for c in cols):
                problems.append(f"episode {e}: meta lacks {key} video columns")
                continue
            rel = L.video_path(key, int(ep[cols[0]]), int(ep[cols[1]]))
            path = L.inside(root, rel)
            if not path.is_file():
                problems.append(f"episode {e}: {rel} is missing")
                continue
            lo, hi = float(ep[cols[2]]), float(ep[cols[3]])
            if abs((hi - lo) * fps - n) > 1e-3:
                problems.append(f"episode {e}: {key} spans {hi - lo:.3f} s, {n} frames need {n / fps:.3f} s")
            try:
                count = packet_count(path, fps, lo, hi)
            except SessionError as exc:
                problems.append(f"episode {e}: {exc}")
                continue
            if count != n:
                problems.append(f"episode {e}: {key} holds {count} video frames, meta and data say {n}")
            elif decode:
                decoded = sum(1 for _ in decode_range(path, fps, round(lo * fps), n))
                if decoded != n:
                    problems.append(f"episode {e}: {key} decodes {decoded} of {n} frames")
            total += count
        report.video_frames[key] = total
    stats_path = root / L.STATS_PATH
    try:
        stats = json.loads(stats_path.read_text())
        for name in ("observation.state", "action"):
            if name not in stats:
                problems.append(f"meta/stats.json lacks {name}")
    except (OSError, ValueError) as exc:
        problems.append(f"meta/stats.json is unreadable ({exc})")
