"""Read recorded sessions: episodes, per-step frames for replay and scrubbing, export, delete, list.

Everything a browser can trigger comes through here, so every path is checked: session names
must be plain folder names inside the sessions root, every file the metadata points at must
resolve inside the session (no `..`, no absolute paths, no symlinks out), and exports can be
confined to a folder with `allowed_root`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rt2_cot.errors import SessionError
from rt2_cot.sessions import layout as L
from rt2_cot.sessions.video import concat, decode_one, decode_range, same_codec


def _plain(value: Any) -> Any:
    """Parquet/pandas scalars -> plain Python, with NaN/NA as None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class SessionDataset:
    """One session folder (a LeRobot v3.0 dataset) opened for reading and editing."""

    def __init__(self, root: str | Path, *, sessions_root: str | Path | None = None) -> None:
        root = Path(root)
        if sessions_root is not None:
            # From a browser: a name, or a path that must resolve inside the sessions root.
            base = Path(sessions_root).resolve()
            candidate = root.resolve() if root.is_absolute() else None
            if candidate is not None and candidate.parent == base:
                root = L.resolve_session(base, candidate.name)
            else:
                root = L.resolve_session(base, str(root))
        self.root = root
        self.info = L.read_info(root)
        self.fps = float(self.info["fps"])
        self._data_cache: dict[Path, tuple[float, Any]] = {}

    @classmethod
    def open(cls, sessions_root: str | Path, name: str) -> SessionDataset:
        """The session called `name` inside `sessions_root` (names from browsers go through here)."""
        return cls(name, sessions_root=sessions_root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def camera_keys(self) -> list[str]:
        return L.video_keys(self.info)

    @property
    def color_key(self) -> str | None:
        keys = self.camera_keys
        return L.COLOR_KEY if L.COLOR_KEY in keys else (keys[0] if keys else None)

    @property
    def depth_key(self) -> str | None:
        for key in self.camera_keys:
            if "depth.encoding" in (self.info["features"][key].get("info") or {}):
                return key
        return None

    @property
    def depth_range_m(self) -> tuple[float, float]:
        key = self.depth_key
        vinfo = self.info["features"][key].get("info", {}) if key else {}
        lo, hi = L.DEFAULT_DEPTH_RANGE_M
        return float(vinfo.get("depth.min_m", lo)), float(vinfo.get("depth.max_m", hi))

    def reload(self) -> None:
        self.info = L.read_info(self.root)
        self._data_cache.clear()

    # -- episodes ---------------------------------------------------------------------------------------
    def _episodes_df(self) -> Any:
        return L.read_episodes(self.root)

    def episodes(self) -> list[dict]:
        """One dict per episode: index, instruction, length, end reason, success, grade, note..."""
        df = self._episodes_df()
        out = []
        for rec in df.to_dict("records"):
            item = {
                "episode_index": int(rec["episode_index"]),
                "instruction": str(rec.get("instruction") or (list(rec.get("tasks") or [""]) or [""])[0]),
                "length": int(rec["length"]),
                "duration_s": int(rec["length"]) / self.fps,
                "tasks": [str(t) for t in (rec.get("tasks") if rec.get("tasks") is not None else [])],
            }
            for key in L.EPISODE_EXTRAS:
                if key not in item:
                    item[key] = _plain(rec.get(key))
            item["operator_note"] = item.get("operator_note") or ""
            out.append(item)
        return out

    def _episode(self, episode_index: int) -> dict:
        df = self._episodes_df()
        hit = df[df["episode_index"] == int(episode_index)] if len(df) else df
        if len(hit) == 0:
            raise SessionError(f"episode {episode_index} is not in session {self.name} ({len(df)} episodes)")
        return hit.iloc[0].to_dict()

    def _data(self, ep: dict) -> Any:
        path = L.inside(self.root, L.data_path(int(ep["data/chunk_index"]), int(ep["data/file_index"])))
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise SessionError(
                f"session {self.name}: data file {path.relative_to(self.root.resolve())} is missing"
            ) from None
        cached = self._data_cache.get(path)
        if cached is None or cached[0] != mtime:
            import pandas as pd

            cached = (mtime, pd.read_parquet(path))
            self._data_cache[path] = cached
        df = cached[1]
        rows = df[df["episode_index"] == int(ep["episode_index"])].sort_values("frame_index")
        return rows.reset_index(drop=True)

    def _video(self, ep: dict, key: str) -> tuple[Path, int]:
        rel = L.video_path(key, int(ep[f"videos/{key}/chunk_index"]), int(ep[f"videos/{key}/file_index"]))
        path = L.inside(self.root, rel)
        if not path.is_file():
            raise SessionError(f"session {self.name}: video {rel} is missing")
        return path, round(float(ep[f"videos/{key}/from_timestamp"]) * self.fps)

    # -- frames -----------------------------------------------------------------------------------------
    def _step(self, ep: dict, row: dict, images: dict[str, np.ndarray]) -> dict:
        tokens = [int(t) for t in row["action_tokens"]]
        step: dict[str, Any] = {
            "episode_index": int(row["episode_index"]),
            "frame_index": int(row["frame_index"]),
            "index": int(row["index"]),
            "timestamp": float(row["timestamp"]),
            "wall_time_s": float(row["wall_time_s"]),
            "instruction": str(ep.get("instruction") or ""),
            "plan": str(row["plan"]),
            "generated_text": str(row["generated_text"]),
            "parse_error": str(row["parse_error"]) or None,
            "action_tokens": None if all(t == L.NO_TOKEN for t in tokens) else tokens,
            "action": [float(v) for v in row["action"]],
            "action_requested": [_plain(float(v)) for v in row["action_requested"]],
            "action_sent": bool(row["action_sent"]),
            "terminate": bool(row["terminate"]),
            "observation.state": [float(v) for v in row["observation.state"]],
            "shield_notes": [n for n in str(row["shield_notes"]).split("\n") if n],
            "latency_ms": float(row["latency_ms"]),
            "ttft_ms": _plain(float(row["ttft_ms"])),
            "replanned": bool(row["replanned"]),
            "loop_hz": float(row["loop_hz"]),
        }
        color, depth = self.color_key, self.depth_key
        step["image"] = images.get(color) if color else None
        for key, image in images.items():
            step[key] = image
        if depth and depth in images:
            step["depth_image"] = images[depth]
            step["depth_m"] = L.grey_to_depth_m(images[depth], self.depth_range_m)
        return step

    def frames(self, episode_index: int, *, with_depth: bool = True) -> Iterator[dict]:
        """Every step of the episode in order, with decoded images (one sequential decode per camera)."""
        ep = self._episode(episode_index)
        rows = self._data(ep).to_dict("records")
        keys = [k for k in self.camera_keys if with_depth or k != self.depth_key]
        decoders = {}
        for key in keys:
            path, first = self._video(ep, key)
            decoders[key] = decode_range(path, self.fps, first, len(rows))
        for row in rows:
            images = {}
            for key, gen in decoders.items():
                image = next(gen, None)
                if image is None:
                    raise SessionError(
                        f"session {self.name}: {key} ends before step {row['frame_index']} of episode {episode_index}"
                    )
                images[key] = image
            yield self._step(ep, row, images)

    def __len__(self) -> int:
        return int(self.info.get("total_frames", 0))

    def frame(self, episode_index: int, index: int) -> dict:
        """One step with its images, for a scrubber (seeks to the nearest keyframe, decodes from there)."""
        ep = self._episode(episode_index)
        rows = self._data(ep)
        n = len(rows)
        if not 0 <= int(index) < n:
            raise SessionError(f"episode {episode_index} has frames 0..{n - 1}, not {index}")
        row = rows.iloc[int(index)].to_dict()
        images = {}
        for key in self.camera_keys:
            path, first = self._video(ep, key)
            images[key] = decode_one(path, self.fps, first + int(index))
        return self._step(ep, row, images)

    # -- editing ----------------------------------------------------------------------------------------
    def set_grade(self, episode_index: int, grade: str | None, note: str = "") -> None:
        from rt2_cot.sessions.recorder import set_grade

        set_grade(self.root, episode_index, grade, note)

    def delete_episode(self, episode_index: int) -> None:
        """Remove one episode; later episodes are renumbered (LeRobot needs 0..N-1 without gaps)."""
        with L.meta_lock(self.root):
            self.reload()
            indices = [e["episode_index"] for e in self.episodes()]
            if int(episode_index) not in indices:
                raise SessionError(f"episode {episode_index} is not in session {self.name}")
            keep = [i for i in indices if i != int(episode_index)]
            staging = self.root / ".rewrite"
            trash = self.root / ".trash"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(trash, ignore_errors=True)
            write_subset(self, keep, staging)
            trash.mkdir()
            for sub in ("data", "videos", "meta"):
                if (self.root / sub).exists():
                    os.replace(self.root / sub, trash / sub)
                if (staging / sub).exists():
                    os.replace(staging / sub, self.root / sub)
            shutil.rmtree(trash, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            self.reload()

    def delete(self) -> None:
        """Delete the whole session folder (refused while a recorder is writing it)."""
        _refuse_if_live(self.root)
        shutil.rmtree(self.root)

    def export(
        self, episode_index: int | None, out_path: str | Path, *, allowed_root: str | Path | None = None
    ) -> Path:
        """Write the whole session (None) or one episode as a standalone LeRobot v3.0 dataset.

        `out_path` ending in .zip gives a zip archive, anything else a folder (which must not exist).
        With `allowed_root`, out_path must resolve inside it.
        """
        out = Path(out_path)
        if allowed_root is not None:
            base = Path(allowed_root).resolve()
            target = out.resolve()
            if target != base and base not in target.parents:
                raise SessionError(f"refusing to export to {out}: exports must stay inside {allowed_root}")
        if out.suffix.lower() != ".zip" and out.exists():
            raise SessionError(f"{out} already exists; choose a new folder or a .zip path")
        if not out.parent.exists():
            raise SessionError(f"cannot export to {out}: folder {out.parent} does not exist")
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
            staging = Path(tmp) / (
                self.name if episode_index is None else f"{self.name}-episode-{int(episode_index)}"
            )
            with L.meta_lock(self.root):
                self.reload()
                if episode_index is None:
                    for sub in ("data", "videos", "meta"):
                        if (self.root / sub).exists():
                            shutil.copytree(self.root / sub, staging / sub, symlinks=False)
                else:
                    self._episode(episode_index)
                    write_subset(self, [int(episode_index)], staging)
            if out.suffix.lower() == ".zip":
                tmp_zip = Path(tmp) / "out.zip"
                with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED) as zf:
                    for path in sorted(staging.rglob("*")):
                        if path.is_file():
                            zf.write(path, Path(staging.name) / path.relative_to(staging))
                os.replace(tmp_zip, out)
            else:
                os.replace(staging, out)
        return out


def write_subset(src: SessionDataset, keep: list[int], dest: Path) -> None:
    """A new LeRobot v3.0 dataset at `dest` holding episodes `keep` of `src`, renumbered 0..k-1."""
    import pandas as pd
    import pyarrow as pa

    from rt2_cot.sessions.recorder import write_episodes, write_stats

    dest.mkdir(parents=True, exist_ok=False)
    all_eps = src._episodes_df()
    by_index = {int(r["episode_index"]): r for r in all_eps.to_dict("records")} if len(all_eps) else {}
    old_tasks = {v: k for k, v in L.read_tasks(src.root).items()}
    tasks: dict[str, int] = {}
    records = []
    tables = []
    start = 0
    video_out: dict[str, dict] = {}  # key -> {"file": n, "pieces": [...], "first_src": Path, "used": frames}
    for new_index, old_index in enumerate(keep):
        ep = dict(by_index[old_index])
        rows = src._data(ep)
        n = len(rows)
        remap = {}
        for old_task in sorted(set(rows["task_index"].tolist())):
            text = old_tasks.get(int(old_task), str(ep.get("instruction") or ""))
            remap[int(old_task)] = tasks.setdefault(text, len(tasks))
        rows = rows.copy()
        rows["episode_index"] = new_index
        rows["index"] = np.arange(start, start + n)
        rows["task_index"] = [remap[int(t)] for t in rows["task_index"]]
        tables.append(rows)
        ep.update(
            {
                "episode_index": new_index,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": start,
                "dataset_to_index": start + n,
            }
        )
        for key in src.camera_keys:
            path, first = src._video(ep, key)
            state = video_out.setdefault(
                key, {"file": 0, "pieces": [], "first_src": path, "used": 0, "files": []}
            )
            if state["pieces"] and path != state["first_src"] and not same_codec(state["first_src"], path):
                state["files"].append(state["pieces"])
                state.update({"file": state["file"] + 1, "pieces": [], "first_src": path, "used": 0})
            state["pieces"].append((path, first, n))
            ep[f"videos/{key}/chunk_index"] = 0
            ep[f"videos/{key}/file_index"] = state["file"]
            ep[f"videos/{key}/from_timestamp"] = state["used"] / src.fps
            ep[f"videos/{key}/to_timestamp"] = (state["used"] + n) / src.fps
            state["used"] += n
        records.append(ep)
        start += n
    if tables:
        data = pd.concat(tables, ignore_index=True)
        L.write_parquet(dest / L.data_path(0, 0), pa.Table.from_pandas(data, preserve_index=False))
    for key, state in video_out.items():
        for file_index, pieces in enumerate([*state["files"], state["pieces"]]):
            if pieces:
                copied = concat(dest / L.video_path(key, 0, file_index), pieces, src.fps)
                if copied != [p[2] for p in pieces]:
                    raise SessionError(
                        f"session {src.name}: {key} is shorter than its metadata; run `rt2-cot session check`"
                    )
    info = dict(src.info)
    info.update(
        {
            "total_episodes": len(keep),
            "total_frames": start,
            "total_tasks": len(tasks),
            "splits": {"train": f"0:{len(keep)}"} if keep else {},
        }
    )
    episodes = pd.DataFrame(records)
    if records:
        write_episodes(dest, episodes)
    L.write_tasks(dest, tasks)
    write_stats(dest, info, episodes)
    L.write_json(dest / L.INFO_PATH, info)


def _refuse_if_live(root: Path) -> None:
    from rt2_cot.sessions.recorder import _claim_owner

    fd = _claim_owner(root)  # raises SessionError while a recorder holds the session
    os.close(fd)


def list_sessions(sessions_root: str | Path) -> list[dict]:
    """Session folders directly inside `sessions_root`, newest name last.

    Each item: name, path, episodes, frames, fps, modified (unix time), in_progress (a recorder's
    journal is present) and, for a folder whose meta is unreadable, error.
    """
    base = Path(sessions_root)
    if not base.is_dir():
        raise SessionError(f"sessions folder {sessions_root} does not exist")
    out = []
    for child in sorted(base.iterdir()):
        if child.name.startswith((".", "_")) or not child.is_dir():
            continue
        try:
            path = L.inside(base, child.name)  # a symlink to elsewhere is not listed
        except SessionError:
            continue
        if not (path / L.INFO_PATH).is_file():
            continue
        journal = path / L.JOURNAL_DIR
        item: dict[str, Any] = {
            "name": child.name,
            "path": str(path),
            "in_progress": journal.is_dir() and any(p.is_dir() for p in journal.iterdir()),
            "modified": (path / L.INFO_PATH).stat().st_mtime,
        }
        try:
            info = L.read_info(path)
            item.update(
                {
                    "episodes": int(info.get("total_episodes", 0)),
                    "frames": int(info.get("total_frames", 0)),
                    "fps": info.get("fps"),
                }
            )
        except SessionError as exc:
            item["error"] = str(exc)
        out.append(item)
    return out


def delete_session(sessions_root: str | Path, name: str) -> None:
    """Delete session `name` (a plain folder name inside sessions_root)."""
    SessionDataset.open(sessions_root, name).delete()
