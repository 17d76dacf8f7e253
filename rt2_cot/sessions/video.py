"""MP4 plumbing for sessions: crash-tolerant streaming encode, lossless concatenation, frame access.

Encoding (`StreamingEncoder`): H.264 / yuv420p (decodes everywhere: PyAV, imageio, browsers,
LeRobot's pyav backend), x264 `zerolatency` so no frame waits in a lookahead or B-frame queue,
a keyframe every `keyframe_s` seconds and a fragmented MP4 (`frag_keyframe+empty_moov`) so each
GOP reaches the disk as a self-contained fragment. A `kill -9` therefore loses at most the GOP in
progress: everything written before the last keyframe stays decodable without a moov atom.

Concatenation (`concat`): packets are copied, never re-encoded, with each piece re-timed to follow
the previous one. Pieces always start on a keyframe (each episode is its own encoder run), and all
pieces of one file share the encoder settings, so the parameter sets match; `same_codec` checks it
before a file is extended.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from rt2_cot.errors import SessionError


def rate_of(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class StreamingEncoder:
    """RGB uint8 frames -> fragmented H.264 MP4, flushed to disk at every keyframe."""

    def __init__(
        self,
        path: Path,
        fps: float,
        width: int,
        height: int,
        *,
        keyframe_s: float = 0.5,
        crf: int = 23,
        preset: str = "ultrafast",
    ) -> None:
        import av

        self.path = Path(path)
        self.rate = rate_of(fps)
        # yuv420p needs even sizes; odd frames are padded at the right/bottom edge.
        self.width, self.height = width + width % 2, height + height % 2
        self.frames = 0
        self._container = av.open(
            str(self.path),
            mode="w",
            format="mp4",
            options={"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"},
        )
        self._stream = self._container.add_stream("libx264", rate=self.rate)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = 1 / self.rate
        gop = str(max(1, round(float(self.rate) * keyframe_s)))
        # threads=1: the machine running the console also runs the model; one encoder thread per
        # camera keeps up with 640x480 at 30 fps on ultrafast and never competes for all cores.
        self._stream.options = {
            "preset": preset,
            "tune": "zerolatency",
            "crf": str(crf),
            "g": gop,
            "keyint_min": gop,
            "sc_threshold": "0",
            "threads": "1",
        }

    def add(self, image: np.ndarray) -> None:
        import av

        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"frames must be HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
        if img.shape[:2] != (self.height, self.width):
            padded = np.zeros((self.height, self.width, 3), np.uint8)
            h, w = min(self.height, img.shape[0]), min(self.width, img.shape[1])
            padded[:h, :w] = img[:h, :w]
            img = padded
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = self.frames
        frame.time_base = 1 / self.rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None


def _open(path: Path):  # -> av.container.InputContainer
    import av

    try:
        return av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise SessionError(f"cannot open video {path}: {exc}") from None


def _frame_index(pts: int, time_base: Fraction, rate: Fraction) -> int:
    return round(pts * time_base * rate)


def packet_count(path: Path, fps: float, start_s: float = 0.0, end_s: float = float("inf")) -> int:
    """Complete video packets (= frames, no B-frames) with start_s <= t < end_s, by demuxing only.

    A fragment truncated by a crash raises inside the demuxer; the packets before it still count.
    """
    import av

    rate = rate_of(fps)
    lo = round(start_s * rate)
    hi = end_s * float(rate)
    n = 0
    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                idx = _frame_index(packet.pts, stream.time_base, rate)
                if lo <= idx < hi - 1e-6:
                    n += 1
        except av.FFmpegError:
            pass
    finally:
        container.close()
    return n


def same_codec(a: Path, b: Path) -> bool:
    """True when b's packets can be appended to a's stream (same codec, size and parameter sets)."""
    ca, cb = _open(a), _open(b)
    try:
        sa, sb = ca.streams.video[0].codec_context, cb.streams.video[0].codec_context
        return (sa.name, sa.width, sa.height, sa.pix_fmt, bytes(sa.extradata or b"")) == (
            sb.name,
            sb.width,
            sb.height,
            sb.pix_fmt,
            bytes(sb.extradata or b""),
        )
    finally:
        ca.close()
        cb.close()


def concat(out_path: Path, pieces: list[tuple[Path, int, int]], fps: float) -> list[int]:
    """Write `out_path` (atomically) from frame ranges [first, first+count) of each piece, in order.

    Returns the number of frames actually copied per piece (fewer when a piece is truncated).
    """
    import av

    rate = rate_of(fps)
    tb = 1 / rate
    tmp = out_path.with_name(f".{out_path.name}.tmp.mp4")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out = av.open(str(tmp), mode="w", format="mp4")
    copied: list[int] = []
    out_stream = None
    next_pts = 0
    try:
        for src, first, count in pieces:
            container = _open(src)
            try:
                stream = container.streams.video[0]
                if out_stream is None:
                    out_stream = out.add_stream_from_template(stream)
                    out_stream.time_base = tb
                n = 0
                try:
                    for packet in container.demux(stream):
                        if packet.pts is None or packet.size == 0:
                            continue
                        idx = _frame_index(packet.pts, stream.time_base, rate)
                        if idx < first or idx >= first + count:
                            continue
                        packet.stream = out_stream
                        packet.time_base = tb
                        packet.pts = packet.dts = next_pts + (idx - first)
                        packet.duration = 1
                        out.mux(packet)
                        n += 1
                except av.FFmpegError:
                    pass  # a crash-truncated fragment: keep what came before it
                copied.append(n)
                next_pts += n
            finally:
                container.close()
    finally:
        out.close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out_path)
    return copied


def decode_range(path: Path, fps: float, first: int, count: int) -> Iterator[np.ndarray]:
    """RGB frames first..first+count-1 of the file, decoded in order (one seek, then sequential)."""
    rate = rate_of(fps)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if first > 0:
            container.seek(int(first / rate / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            idx = _frame_index(frame.pts, frame.time_base, rate)
            if idx < first:
                continue
            if idx >= first + count:
                break
            yield frame.to_ndarray(format="rgb24")
    finally:
        container.close()


def decode_keyframes(path: Path) -> list[np.ndarray]:
    """The keyframes of a file as RGB images (the decoder skips every other frame)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    finally:
        container.close()


def decode_one(path: Path, fps: float, index: int) -> np.ndarray:
    for image in decode_range(path, fps, index, 1):
        return image
    raise SessionError(f"frame {index} is not in {path.name} (the video is shorter than its metadata)")


def video_info(path: Path) -> dict:
    """LeRobot's `info` block of a video feature."""
    container = _open(path)
    try:
        cc = container.streams.video[0].codec_context
        return {
            "video.height": cc.height,
            "video.width": cc.width,
            "video.codec": cc.name,
            "video.pix_fmt": cc.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": float(container.streams.video[0].average_rate or 0) or None,
            "video.channels": 3,
            "has_audio": bool(container.streams.audio),
        }
    finally:
        container.close()
