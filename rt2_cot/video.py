"""Rollout videos people can watch: H.264 / yuv420p MP4 from RGB frames, with optional captions.

`VideoWriter` takes frames one by one; `VideoSubscriber` plugs into the control loop and writes
every step's camera frame with the instruction, the plan and the step number burnt in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from rt2_cot.errors import ConfigError
from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, LoopEvent, StepRecord
from rt2_cot.sessions.video import StreamingEncoder


class VideoWriter:
    """Write RGB uint8 frames (HxWx3) to an MP4 that browsers and players open (H.264, yuv420p).

    The first frame fixes the size; odd sizes are padded to even (yuv420p needs even dimensions).
    """

    def __init__(self, path: str | Path, fps: float = 10.0) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ConfigError(f"video output must be an .mp4 file, got {self.path}")
        if not self.path.parent.exists():
            raise ConfigError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.fps = fps
        self._encoder: StreamingEncoder | None = None

    @property
    def frames(self) -> int:
        return self._encoder.frames if self._encoder is not None else 0

    def add(self, frame: np.ndarray) -> None:
        img = np.asarray(frame)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"frames must be HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
        if self._encoder is None:
            # The session recorder's encoder (H.264, yuv420p, even-size padding); a rollout video
            # wants quality over latency, so a higher-quality preset and sparser keyframes.
            self._encoder = StreamingEncoder(
                self.path, self.fps, img.shape[1], img.shape[0], keyframe_s=2.0, crf=20, preset="veryfast"
            )
        self._encoder.add(img)

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def caption(image: np.ndarray, lines: list[str], scale: int = 2) -> np.ndarray:
    """The image upscaled by `scale` with a dark text band at the bottom holding `lines`."""
    import cv2

    img = np.asarray(image, np.uint8)
    if scale != 1:
        img = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    line_h = 20
    band = np.full((line_h * len(lines) + 8, img.shape[1], 3), 24, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(
            band,
            text[:90],
            (6, line_h * (i + 1)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (235, 235, 235),
            1,
            cv2.LINE_AA,
        )
    return np.concatenate([img, band], axis=0)


class VideoSubscriber:
    """A control-loop subscriber that records every step's frame, captioned, into one MP4."""

    def __init__(
        self,
        writer: VideoWriter,
        scale: int = 2,
        hold_last_s: float = 0.5,
        final_frame: Callable[[], np.ndarray] | None = None,
    ) -> None:
        """`final_frame()` returns an RGB image of the state after the last action (step records
        only hold what the policy saw before acting), e.g. `lambda: camera.read().color`."""
        self.writer = writer
        self.final_frame = final_frame
        self.scale = scale
        self.hold_last_s = hold_last_s
        self._instruction = ""
        self._last: np.ndarray | None = None
        self._plan = ""

    def __call__(self, event: LoopEvent) -> None:
        if isinstance(event, EpisodeStarted):
            self._instruction, self._plan = event.instruction, ""
        elif isinstance(event, StepRecord):
            self._plan = event.output.plan or self._plan
            tokens = " ".join(str(t) for t in event.output.tokens) if event.output.tokens else "-"
            lines = [f"> {self._instruction}", f"Plan: {self._plan}", f"step {event.step}  action {tokens}"]
            self._last = caption(event.frame.color, lines, self.scale)
            self.writer.add(self._last)
        elif isinstance(event, EpisodeEnded) and self._last is not None:
            verdict = {True: "success", False: "failure", None: "not graded"}[event.success]
            import cv2

            img = self._last.copy()
            if self.final_frame is not None:
                lines = [f"> {self._instruction}", f"Plan: {self._plan}", f"end after {event.steps} steps"]
                img = caption(self.final_frame(), lines, self.scale)

            cv2.putText(
                img,
                f"{event.reason}: {verdict}",
                (8, 28),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.8,
                (255, 255, 0),
                2,
                cv2.LINE_AA,
            )
            for _ in range(max(1, round(self.hold_last_s * self.writer.fps))):
                self.writer.add(img)
            self._last = None
