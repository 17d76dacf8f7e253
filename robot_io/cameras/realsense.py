"""Intel RealSense (D400 series) through pyrealsense2: a live camera, .bag/.db3 playback, .db3 recording.

Depth is aligned to colour with `rs.align`, so `Frame.depth[v, u]` is the depth of colour pixel
(u, v) and `Frame.intrinsics` (the colour stream's) serves both. pyrealsense2 is imported only
when a RealSense source is opened.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from robot_io.cameras.base import Camera, require
from robot_io.errors import CameraError
from robot_io.types import CameraIntrinsics, Frame

PLAYBACK_SUFFIXES = (".bag", ".db3")


# How long a stopped, non-looping playback must stay silent before its recording counts as read
# (when the last colour frame delivered is the recording's last; otherwise it waits timeout_s).
END_QUIET_S = 0.3
# How often a one-shot playback that began past its recording's first frame is opened again.
MAX_LATE_STARTS = 3


class RecordingEnded(CameraError):
    """A recording played to its end (and `loop` is off)."""


def import_pyrealsense2():
    """pyrealsense2, or a CameraError that says how to install it."""
    try:
        import pyrealsense2 as rs
    except ImportError as exc:  # also covers a missing libusb shared library
        raise CameraError(
            f"RealSense sources need pyrealsense2 ({exc}): pip install pyrealsense2, "
            "and on Debian/Ubuntu apt install libusb-1.0-0"
        ) from exc
    return rs


@dataclass(frozen=True)
class RealSenseConfig:
    """What to open. Exactly one of a live device (`serial`, or the first one found) or `file`.

    Defaults are the D435's most common RGB-D mode: 640x480 at 30 fps for both streams.
    """

    serial: str | None = None  # live device by serial number; None: the first one found
    file: str | None = None  # play back a .bag (ROS1, older SDKs) or .db3 (rosbag2, SDK >= 2.56)
    width: int = 640
    height: int = 480
    fps: int = 30
    depth: bool = True
    align_depth_to_color: bool = True
    # Playback: real_time=False hands over every recorded frame as fast as read() asks for it, so
    # tests and offline evaluation neither drop frames nor wait for wall-clock time.
    real_time: bool = False
    loop: bool = False  # playback restarts at the end instead of raising RecordingEnded
    record_to: str | None = None  # live only: also write everything streamed to this .db3
    timeout_s: float = 5.0  # longest wait for one frame before CameraError


def _fmt_name(fmt: Any) -> str:
    return str(fmt).rsplit(".", 1)[-1]


def _to_rgb(rs, frame) -> np.ndarray:
    """Colour frame of any common RealSense format -> HxWx3 RGB uint8 (a copy)."""
    fmt = frame.get_profile().format()
    data = np.asanyarray(frame.get_data())
    if fmt == rs.format.rgb8:
        return data.copy()
    if fmt == rs.format.bgr8:
        return data[..., ::-1].copy()
    if fmt == rs.format.rgba8:
        return data[..., :3].copy()
    if fmt == rs.format.bgra8:
        return data[..., 2::-1].copy()
    if fmt == rs.format.yuyv:
        import cv2

        return cv2.cvtColor(data.reshape(frame.get_height(), frame.get_width(), 2), cv2.COLOR_YUV2RGB_YUYV)
    raise CameraError(f"unsupported RealSense colour format {_fmt_name(fmt)}; record colour as rgb8 or bgr8")


def list_realsense_devices() -> list[dict]:
    """Attached RealSense devices (empty when none, or when pyrealsense2 is missing)."""
    try:
        rs = import_pyrealsense2()
    except CameraError:
        return []
    devices = []
    for dev in rs.context().query_devices():

        def info(key, dev=dev):
            return dev.get_info(key) if dev.supports(key) else None

        serial = info(rs.camera_info.serial_number)
        devices.append(
            {
                "source": f"realsense:{serial}",
                "kind": "realsense",
                "name": info(rs.camera_info.name),
                "serial": serial,
                "firmware": info(rs.camera_info.firmware_version),
                "usb": info(rs.camera_info.usb_type_descriptor),
            }
        )
    return devices


class RealSenseCamera(Camera):
    """A RealSense camera or recording behind the `Camera` interface."""

    name = "realsense"

    def __init__(self, config: RealSenseConfig | None = None) -> None:
        super().__init__()
        self.config = config or RealSenseConfig()
        require(
            not (self.config.file and self.config.serial),
            "a RealSense source is either a live device (serial) or a recording (file), not both",
        )
        self._rs = None
        self._pipeline = None
        self._align = None
        self._playback = None
        self._rs_config = None  # kept so a looping recording can restart its pipeline
        self._seen_playing = False  # playback: PLAYING was read in this run (see _playback_stopped)
        self._first_frame_at: float | None = None  # playback: time.monotonic() of the run's first frame
        self._run_started = 0.0  # playback: time.monotonic() of the last (re)start
        self._color_ts_ms: tuple[float, float] | None = None  # playback: run's first and last colour stamps
        self._ended = False  # one-shot playback: the recording was read to its end
        self._duration_ms = 0.0  # playback: the recording's length
        self.loops = 0  # playback: how often the recording restarted from its beginning
        self._intrinsics: CameraIntrinsics | None = None
        self._depth_scale_m = 0.0
        self._streams: dict[str, dict | None] = {"color": None, "depth": None}
        self._index = 0
        self._use_depth = self.config.depth
        self._held = None  # playback: one frameset held back to pair colour with its own depth
        self._reopened = False  # playback: reopened once already after a first pass with no frame
        self._first_color_number: int | None = None  # .db3 playback: the recording's first colour frame
        self._late_starts = 0  # playback: passes reopened because they began past the first frame
        self._lock = threading.Lock()  # one reader at a time; read_latest never takes it
        self.device_info: dict[str, str | None] = {}
        # The last depth image before alignment, as the sensor measured it (a copy). Aligning
        # reprojects depth (a wider field of view) onto colour, which changes its valid fraction.
        self.last_raw_depth: np.ndarray | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def intrinsics(self) -> CameraIntrinsics:
        require(self._intrinsics is not None, "the RealSense camera is not connected; call connect() first")
        return self._intrinsics

    @property
    def connected(self) -> bool:
        return self._pipeline is not None

    @property
    def depth_scale_m(self) -> float:
        return self._depth_scale_m

    def stream_info(self) -> dict[str, dict | None]:
        """{'color': {width, height, fps, format}, 'depth': {...} or None} of the running streams."""
        return dict(self._streams)

    # -- connect ----------------------------------------------------------------------------

    def connect(self) -> None:
        if self._pipeline is not None:
            return
        rs = self._rs = import_pyrealsense2()
        cfg = self.config
        rs_config = rs.config()
        if cfg.file:
            self._configure_playback(rs, rs_config)
        else:
            self._configure_live(rs, rs_config)
        pipeline = rs.pipeline()
        try:
            if cfg.file:
                # Resolve first and set the pacing on the resolved device, which start() then
                # reuses: switching after start() loses the frames already played in real time.
                resolved = rs_config.resolve(rs.pipeline_wrapper(pipeline))
                resolved.get_device().as_playback().set_real_time(cfg.real_time)
            profile = pipeline.start(rs_config)
        except RuntimeError as exc:
            raise CameraError(self._start_error(exc)) from None
        try:
            self._describe(rs, profile)
        except Exception:
            pipeline.stop()
            raise
        self._pipeline = pipeline
        # Kept only for `loop` (restarts need it): it caches the resolved playback device, and
        # holding that past connect() changes when the device is destroyed (see disconnect).
        self._rs_config = rs_config if cfg.file and cfg.loop else None
        self._new_run()
        self.loops = 0
        self._align = rs.align(rs.stream.color) if self._use_depth and cfg.align_depth_to_color else None
        self._index = 0
        logger.info(
            "RealSense {} started: colour {}, depth {}",
            cfg.file or self.device_info.get("serial"),
            self._streams["color"],
            self._streams["depth"],
        )

    def _configure_playback(self, rs, rs_config) -> None:
        cfg = self.config
        path = Path(cfg.file)
        require(path.is_file(), f"recording {path} not found; give the path of a .bag or .db3 file")
        require(
            path.suffix.lower() in PLAYBACK_SUFFIXES,
            f"{path} is not a RealSense recording; playback reads .bag or .db3 files",
        )
        require(cfg.record_to is None, "record_to works with live cameras only, not while playing a file")
        # No enable_stream: a recording dictates its own streams and modes (checked in _describe).
        # repeat_playback stays off even with `loop`: the SDK loops by re-starting the sensors from
        # a STOPPED callback on its own thread, so every lap passes through STOPPED (which reads as
        # "ended" here) and now and then the restart never comes and playback stays STOPPED for
        # good. _wait_frameset restarts the pipeline itself instead (see _restart_playback).
        rs_config.enable_device_from_file(str(path), repeat_playback=False)
        if self._first_color_number is None and path.suffix.lower() == ".db3":
            self._first_color_number = first_color_frame_number(path)

    def _configure_live(self, rs, rs_config) -> None:
        cfg = self.config
        # pipeline.start() with nothing attached blocks ~15 s before failing; ask the context first.
        devices = rs.context().query_devices()
        serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
        require(
            len(serials) > 0,
            "no RealSense camera is attached: plug one into a USB 3 port (check `rs-enumerate-devices`), "
            "or use --camera file:PATH.bag|.db3 or --camera sim",
        )
        if cfg.serial:
            require(
                cfg.serial in serials,
                f"no RealSense camera with serial {cfg.serial}; attached: {', '.join(serials)}",
            )
            rs_config.enable_device(cfg.serial)
        rs_config.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, cfg.fps)
        if cfg.depth:
            rs_config.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16, cfg.fps)
        if cfg.record_to:
            out = Path(cfg.record_to)
            require(out.suffix.lower() == ".db3", f"record_to must be a .db3 file (rosbag2), got {out}")
            require(out.parent.is_dir(), f"cannot record to {out}: folder {out.parent} does not exist")
            rs_config.enable_record_to_file(str(out))

    def _start_error(self, exc: RuntimeError) -> str:
        cfg = self.config
        reason = str(exc).split("Reason:", 1)[-1].strip()
        if cfg.file:
            return f"cannot play {cfg.file}: it is corrupt, truncated or not a RealSense recording ({reason})"
        return (
            f"cannot start the RealSense camera ({reason}); check it is not in use by another program "
            f"and that the requested mode {cfg.width}x{cfg.height}@{cfg.fps} is supported"
        )

    def _describe(self, rs, profile) -> None:
        device = profile.get_device()
        info = {}
        for key, name in ((rs.camera_info.serial_number, "serial"), (rs.camera_info.name, "name")):
            info[name] = device.get_info(key) if device.supports(key) else None
        self.device_info = info
        if self.config.file:
            self._playback = device.as_playback()
            self._duration_ms = self._playback.get_duration().total_seconds() * 1e3
            if self._playback.is_real_time() != self.config.real_time:  # start() made a new device
                self._playback.set_real_time(self.config.real_time)
        streams = {"color": None, "depth": None}
        for stream in profile.get_streams():
            kind = {rs.stream.color: "color", rs.stream.depth: "depth"}.get(stream.stream_type())
            if kind is None:
                continue
            video = stream.as_video_stream_profile()
            streams[kind] = {
                "width": video.width(),
                "height": video.height(),
                "fps": stream.fps(),
                "format": _fmt_name(stream.format()),
            }
            if kind == "color":
                i = video.get_intrinsics()
                self._intrinsics = CameraIntrinsics(i.width, i.height, i.fx, i.fy, i.ppx, i.ppy)
        require(streams["color"] is not None, "the RealSense source has no colour stream")
        self._use_depth = self.config.depth and streams["depth"] is not None
        if self.config.depth and not self._use_depth:
            logger.warning("the RealSense source has no depth stream; frames carry colour only")
        if self._use_depth:
            # The SDK stores the scale as float32 (0.0010000000474974513); 6 digits give back 0.001.
            self._depth_scale_m = float(f"{device.first_depth_sensor().get_depth_scale():.6g}")
        else:
            streams["depth"] = None
        self._streams = streams

    # -- read -------------------------------------------------------------------------------

    def _new_run(self) -> None:
        self._seen_playing = False
        self._first_frame_at = None
        self._run_started = time.monotonic()
        self._color_ts_ms = None
        self._ended = False

    def _playback_stopped(self) -> bool:
        """True once this playback run has played and then stopped: the recording is exhausted.

        A run starts in STOPPED and reads so for a few ms (longer on a loaded machine), and its
        first frame can arrive while it still does; a short lap can also play entirely between two
        polls. So STOPPED counts as the end after PLAYING was read in this run, or once a frame has
        arrived and 0.1 s have passed since the start, or 0.3 s after the start in any case.
        Counting a frame as PLAYING at once (as this did) ended a recording after one frame ~1 in
        10 non-real-time plays of a 12-frame .db3. (A status-change callback would see every
        transition, but releasing its device handle aborted pipeline.stop() now and then.)"""
        if self._playback is None:
            return False
        if self._playback.current_status() != self._rs.playback_status.stopped:
            self._seen_playing = True
            return False
        since_start = time.monotonic() - self._run_started
        return (
            self._seen_playing
            or (self._first_frame_at is not None and since_start > 0.1)
            or since_start > 0.3
        )

    def _at_recording_end(self) -> bool:
        """True when this run's colour frames span the whole recording, so the last one delivered is
        its last. A one-shot read that stops short waits timeout_s for the rest: on a loaded machine
        playback can stop while its last frames are still on their way (CI once read 1 of 4 frames of
        a .db3 after 0.3 s of silence). Real-time playback drops frames by design, so it never waits."""
        if self.config.real_time:
            return True
        if self._color_ts_ms is None:
            return False
        fps = (self._streams.get("color") or {}).get("fps") or 30
        first, last = self._color_ts_ms
        return last - first >= self._duration_ms - 1.5 * 1e3 / fps

    def _restart_playback(self) -> None:
        """Play the recording again from its beginning (for `loop`).

        At the end of the file the playback device has already stopped its sensors and rewound its
        reader, so stop() + start() of the pipeline replays from the first frame. start() reuses the
        device resolved in connect() (the config caches it): no device search, ~5 ms, and the
        real-time pacing set on it stays."""
        t0 = time.monotonic()
        try:
            self._pipeline.stop()
            profile = self._pipeline.start(self._rs_config)
        except RuntimeError as exc:
            self._pipeline = None  # stopped (or never restarted): connect() can start afresh
            raise CameraError(f"cannot restart {self.config.file} for looping: {exc}") from None
        self._playback = profile.get_device().as_playback()
        if self._playback.is_real_time() != self.config.real_time:
            self._playback.set_real_time(self.config.real_time)
        self._new_run()
        self.loops += 1
        logger.debug(
            "RealSense recording restarted (lap {}) in {:.1f} ms",
            self.loops + 1,
            1e3 * (time.monotonic() - t0),
        )

    def _wait_frameset(self):
        """Next frameset with every enabled stream, or None once a recording has ended (with
        `loop`, the recording restarts instead and this keeps waiting)."""
        if self._ended:
            return None  # at once: a read past the end does not wait for the silence again
        deadline = time.monotonic() + self.config.timeout_s
        quiet_since = None  # first empty wait after the playback read as stopped
        while True:
            # Status before the wait: if playback had already stopped and the wait then brings
            # nothing, every frame it played has been delivered, so the recording is exhausted.
            # Short waits so the end of a recording is noticed at once instead of after a timeout;
            # Playback polls in 20 ms slices: a one-frame lap would otherwise idle ~100 ms per lap.
            # Once stopped, 50 ms leaves frames still passing through the pipeline's syncer time
            # to arrive before the recording is declared exhausted.
            stopped = self._playback_stopped()
            if not stopped:
                quiet_since = None
            wait_ms = 100 if self._playback is None else (50 if stopped else 20)
            ok, frames = self._pipeline.try_wait_for_frames(wait_ms)
            if ok:
                quiet_since = None
                if self._first_frame_at is None:  # not PLAYING yet (see _playback_stopped)
                    self._first_frame_at = time.monotonic()
                color = frames.get_color_frame()
                if color:
                    stamp = color.get_timestamp()
                    self._color_ts_ms = (self._color_ts_ms or (stamp, stamp))[0], stamp
                if color and (not self._use_depth or frames.get_depth_frame()):
                    frames.keep()  # it may be held past the next wait (see _next_playback_frameset)
                    return frames
            elif stopped:
                if not self.config.loop:
                    # A one-shot read must not lose the recording's tail, so its end is confirmed
                    # by END_QUIET_S of silence. A loaded machine can stall the playback or the
                    # syncer thread past one short wait (CI once read 1 of 10 frames of a .db3).
                    # A loop keeps the short wait: a lap ended early only restarts sooner.
                    quiet_since = quiet_since or time.monotonic()
                    quiet = time.monotonic() - quiet_since
                    if quiet < END_QUIET_S or (
                        quiet < self.config.timeout_s and not self._at_recording_end()
                    ):
                        continue
                    logger.log(
                        "DEBUG" if quiet < self.config.timeout_s else "WARNING",
                        "RealSense {} ended {} (frames {} ms of {:.0f} ms; playback stopped, quiet {:.2f} s)",
                        self.config.file,
                        "at its last frame" if quiet < self.config.timeout_s else "short of its last frame",
                        "none"
                        if self._color_ts_ms is None
                        else f"{self._color_ts_ms[0]:.0f}-{self._color_ts_ms[1]:.0f}",
                        self._duration_ms,
                        quiet,
                    )
                    self._ended = True
                    return None
                # The deadline stays: a recording that never yields a whole frameset must still
                # fail after timeout_s instead of restarting forever.
                self._restart_playback()
                continue
            if time.monotonic() > deadline:
                if self._playback is not None:
                    raise CameraError(
                        f"no complete frame from the recording {self.config.file} within "
                        f"{self.config.timeout_s:.1f} s; it may lack colour or depth frames"
                    )
                raise CameraError(
                    f"no frame from the RealSense camera within {self.config.timeout_s:.1f} s; "
                    "check the USB cable (USB 3) and that no other program uses the camera"
                )

    @staticmethod
    def _numbers(frames) -> tuple[int, int | None]:
        depth = frames.get_depth_frame()
        return frames.get_color_frame().get_frame_number(), depth.get_frame_number() if depth else None

    def _read(self) -> Frame:
        require(self._pipeline is not None, "the RealSense camera is not connected; call connect() first")
        with self._lock:
            frames = self._next_frameset()
            if frames is None and self._index == 0 and not self.config.loop and not self._reopened:
                # Now and then (3 in 120 opens of the one-frame D435 fixture, not in real time)
                # librealsense plays a recording without delivering a single frame: nothing at
                # all arrives, not even a partial frameset. A recording that yields nothing on
                # its first pass was not read, it was lost, so open it once more rather than
                # report a valid file as ended. With `loop` the next lap covers this already.
                self._reopened = True
                logger.warning(
                    "RealSense {} delivered no frame on its first pass; reopening it", self.config.file
                )
                self.disconnect()
                self.connect()
                frames = self._next_frameset()
            while frames is not None and self._began_late(frames):
                # On a loaded machine (CI, twice in a row on one run; 1 in 30 probes beside three
                # busy loops) a one-shot, non-real-time pass of a short .db3 delivers only its last
                # frame: the file holds every frame (counted with recorded_image_counts), but the
                # SDK's pacing let the playback run ahead of the pipeline's one-frameset queue before
                # the first read, and pause/seek(0) does not rewind it. The recording's own first
                # frame number tells such a pass apart, so it is opened again.
                self._late_starts += 1
                began_at = frames.get_color_frame().get_frame_number()
                frames = None  # released before the pipeline that delivered it stops
                logger.warning(
                    "RealSense {} began at colour frame {}, not the recording's first ({}); reopening it",
                    self.config.file,
                    began_at,
                    self._first_color_number,
                )
                self.disconnect()
                self.connect()
                frames = self._next_frameset()
            if frames is None:
                raise RecordingEnded(f"the recording {self.config.file} has ended")
            return self._to_frame(frames)

    def _began_late(self, frames) -> bool:
        """True when a one-shot, non-real-time pass's first frame is not the recording's first
        (known for .db3 files), for at most MAX_LATE_STARTS reopenings per camera."""
        return (
            self._index == 0
            and self._first_color_number is not None
            and not self.config.loop
            and not self.config.real_time
            and self._late_starts < MAX_LATE_STARTS
            and frames.get_color_frame().get_frame_number() != self._first_color_number
        )

    def _next_frameset(self):
        """Next frameset to turn into a Frame, or None once a recording has ended."""
        if self._playback is None or not self._use_depth:
            return self._wait_frameset()
        return self._next_playback_frameset()

    def _next_playback_frameset(self):
        """Playback pairs each colour frame with the newest depth frame, so a colour frame that was
        recorded just before its depth frame comes out twice: first with the previous depth, then
        with its own. Holding one frameset back and keeping the later pairing returns every colour
        frame once, with the depth recorded beside it.

        Real-time playback also drops a depth frame now and then (typically as a lap starts); its
        colour frame then comes paired with the *next* depth, which belongs to the next colour
        frame. Such a colour frame is skipped rather than returned with another frame's depth."""
        held = self._held
        while True:
            frames = self._wait_frameset()
            if frames is None:
                self._held = None
                return held
            if held is None:
                held = frames
                continue
            (held_color, held_depth), (color, depth) = self._numbers(held), self._numbers(frames)
            if color == held_color and depth != held_depth:
                held = frames  # the same colour frame, now with the depth recorded beside it
                continue
            if color != held_color and depth == held_depth and self._depth_is_later(held, frames):
                held = frames  # the held colour frame lost its own depth (see above)
                continue
            self._held = frames
            return held

    @staticmethod
    def _depth_is_later(held, frames) -> bool:
        """True when the depth frame shared by two framesets was recorded nearer the later colour."""
        depth_t = frames.get_depth_frame().get_timestamp()
        held_gap = abs(depth_t - held.get_color_frame().get_timestamp())
        return abs(depth_t - frames.get_color_frame().get_timestamp()) < held_gap

    def _to_frame(self, frames) -> Frame:
        timestamp = time.monotonic()
        depth_array = None
        if self._use_depth:
            depth = frames.get_depth_frame()
            self.last_raw_depth = np.asanyarray(depth.get_data()).copy()
            if self._align is not None:
                frames = self._align.process(frames)
                depth = frames.get_depth_frame()
            depth_array = np.asanyarray(depth.get_data()).copy()
        color_array = _to_rgb(self._rs, frames.get_color_frame())
        self._index += 1
        return Frame(
            color=color_array,
            depth=depth_array,
            depth_scale_m=self._depth_scale_m,
            intrinsics=self.intrinsics,
            timestamp_s=timestamp,
            index=self._index,
        )

    def disconnect(self) -> None:
        # A kept config (loop) goes first, while the pipeline still runs, as it would have as a
        # local of connect(): freed after the pipeline had stopped (when the camera object was
        # collected), it crashed the process now and then (segfault, ~1 in 10 test-file runs).
        self._rs_config = None
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            try:
                pipeline.stop()  # also closes a .db3 being recorded
            except RuntimeError as exc:
                logger.warning("RealSense stop: {}", exc)
        self._playback = None
        self._held = None


def write_recording(
    path: str | Path,
    colors: list[np.ndarray],
    depths: list[np.ndarray] | None,
    intrinsics: CameraIntrinsics,
    depth_scale_m: float = 0.001,
    fps: int = 30,
    attempts: int = 3,
) -> Path:
    """Write RGB (+ z16 depth, already aligned to colour) frames as a RealSense .db3 recording.

    Uses `rs.software_device` + `rs.recorder`, so no camera is needed: handy for test fixtures and
    for turning simulator frames into a recording that `file:PATH.db3` plays back.

    The file is checked before it is handed over (a .db3 is an SQLite rosbag2 store: one message
    per recorded image, `recorded_image_counts`) and written again if a stream came out short;
    after `attempts` short writes this raises CameraError. (When CI played back only the last of
    10 or 12 frames of such a file, the file held all of them: that loss is on the playback side,
    see RealSenseCamera._read.)
    """
    path = Path(path)
    require(path.suffix.lower() == ".db3", f"RealSense recordings are written as .db3, got {path}")
    require(len(colors) > 0, "write_recording needs at least one colour frame")
    h, w = colors[0].shape[:2]
    require(
        (w, h) == (intrinsics.width, intrinsics.height),
        f"frames are {w}x{h} but intrinsics say {intrinsics.width}x{intrinsics.height}",
    )
    if depths is not None:
        require(len(depths) == len(colors), "write_recording needs one depth image per colour image")
    expected = {"color": len(colors), **({"depth": len(depths)} if depths is not None else {})}
    for attempt in range(1, attempts + 1):
        path.unlink(missing_ok=True)
        _record(path, colors, depths, intrinsics, depth_scale_m, fps)
        counts = recorded_image_counts(path)
        if counts == expected:
            return path
        logger.warning(
            "RealSense recorder wrote {} of {} images to {} (attempt {} of {})",
            counts,
            expected,
            path,
            attempt,
            attempts,
        )
    raise CameraError(f"the RealSense recorder kept losing frames writing {path}: {counts} of {expected}")


def _query_db3(path: str | Path, sql: str) -> list[tuple]:
    """Rows of `sql` over a .db3 recording's rosbag2 tables (`messages`, `topics`), opened read-only;
    CameraError if the file is missing or not an SQLite store."""
    import sqlite3

    path = Path(path)
    require(path.is_file(), f"recording {path} not found")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute(sql).fetchall()
    except sqlite3.DatabaseError as exc:
        raise CameraError(f"{path} is not a readable .db3 recording: {exc}") from None


def recorded_image_counts(path: str | Path) -> dict[str, int]:
    """Images stored per stream ("color", "depth") in a .db3 recording, read from its rosbag2 tables."""
    rows = _query_db3(
        path,
        "SELECT t.name, COUNT(*) FROM messages m JOIN topics t ON m.topic_id = t.id "
        "WHERE t.name LIKE '%/image/data%' GROUP BY t.name",
    )
    counts: dict[str, int] = {}
    for topic, n in rows:
        kind = "color" if "/Color_" in topic else "depth" if "/Depth_" in topic else None
        if kind:
            counts[kind] = counts.get(kind, 0) + n
    return counts


def first_color_frame_number(path: str | Path) -> int | None:
    """The frame number of a .db3 recording's first colour image (from its metadata topic, whose
    messages read "Frame number=N;..."), or None if the file does not say."""
    try:
        rows = _query_db3(
            path,
            "SELECT m.data FROM messages m JOIN topics t ON m.topic_id = t.id "
            "WHERE t.name LIKE '%/Color_%/image/metadata' ORDER BY m.timestamp LIMIT 1",
        )
    except CameraError:
        return None  # not a readable store: pipeline.start() reports that in its own words
    if not rows:
        return None
    found = re.search(rb"Frame number=(\d+)", bytes(rows[0][0]))
    return int(found.group(1)) if found else None


def _record(path: Path, colors, depths, intrinsics: CameraIntrinsics, depth_scale_m: float, fps: int) -> None:
    import gc

    rs = import_pyrealsense2()
    h, w = colors[0].shape[:2]

    def rs_intrinsics():
        i = rs.intrinsics()
        i.width, i.height, i.fx, i.fy, i.ppx, i.ppy = (
            w,
            h,
            intrinsics.fx,
            intrinsics.fy,
            intrinsics.ppx,
            intrinsics.ppy,
        )
        i.model, i.coeffs = rs.distortion.none, [0.0] * 5
        return i

    def video_stream(kind, uid, fmt, bpp):
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height = kind, 0, uid, w, h
        vs.fps, vs.bpp, vs.fmt, vs.intrinsics = fps, bpp, fmt, rs_intrinsics()
        return vs

    device = rs.software_device()
    sensors = [(device.add_sensor("Color"), rs.stream.color, rs.format.rgb8, 3, colors)]
    if depths is not None:
        depth_sensor = device.add_sensor("Depth")
        depth_sensor.add_read_only_option(rs.option.depth_units, float(depth_scale_m))
        sensors.append((depth_sensor, rs.stream.depth, rs.format.z16, 2, depths))
    profiles = [
        sensor.add_video_stream(video_stream(kind, uid, fmt, bpp)).as_video_stream_profile()
        for uid, (sensor, kind, fmt, bpp, _) in enumerate(sensors)
    ]
    if len(profiles) == 2:  # depth is already aligned: identity extrinsics, so rs.align is a no-op
        extrinsics = rs.extrinsics()
        extrinsics.rotation, extrinsics.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        profiles[1].register_extrinsics_to(profiles[0], extrinsics)
    recorder = rs.recorder(str(path), device)
    sync = rs.syncer()
    for (sensor, *_), profile in zip(sensors, profiles, strict=True):
        sensor.open(profile)
        sensor.start(sync)
    keep_alive = []  # librealsense reads the pixel buffers after on_video_frame returns
    t0 = time.monotonic()
    for k in range(len(colors)):
        # The recorder stamps messages with the time they arrive, not frame.timestamp: pace the
        # frames at `fps` so the file's timeline (and real-time playback) matches the stream.
        time.sleep(max(0.0, t0 + k / fps - time.monotonic()))
        for (sensor, _kind, _fmt, bpp, images), profile in zip(sensors, profiles, strict=True):
            dtype = np.uint8 if bpp == 3 else np.uint16
            pixels = np.ascontiguousarray(images[k], dtype=dtype)
            keep_alive.append(pixels)
            frame = rs.software_video_frame()
            frame.pixels, frame.bpp, frame.stride = pixels, bpp, w * bpp
            frame.timestamp = 1000.0 * (k + 1) / fps  # ms; a frame stamped 0 is dropped on playback
            frame.domain = rs.timestamp_domain.hardware_clock
            frame.frame_number = k
            frame.profile = profile
            sensor.on_video_frame(frame)
    for sensor, *_ in sensors:
        sensor.stop()
        sensor.close()
    recorder.pause()
    del recorder, device  # the file is finalised when the recorder is destroyed
    gc.collect()
