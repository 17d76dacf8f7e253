"""`rt2-cot cameras list | probe SOURCE`: what is attached, and what a source really delivers."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from loguru import logger

from robot_io.errors import CameraError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="attached RealSense cameras, webcams and the simulator")
    listing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    probe = sub.add_parser("probe", help="open SOURCE, read frames, report streams and depth quality")
    probe.add_argument(
        "source", metavar="SOURCE", help="sim, realsense[:SERIAL], file:PATH(.bag|.db3), webcam:N, images:DIR"
    )
    probe.add_argument("--frames", type=int, default=10, help="frames to read (default 10)")
    probe.add_argument("--json", action="store_true", help="one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args)
    return _probe(args)


def _list(args: argparse.Namespace) -> int:
    from robot_io.cameras.registry import list_cameras

    cameras = list_cameras()
    if args.json:
        print(json.dumps({"cameras": cameras}))
        return 0
    for cam in cameras:
        extra = f" (serial {cam['serial']}, firmware {cam.get('firmware')})" if cam.get("serial") else ""
        print(f"{cam['source']:<28} {cam.get('name') or ''}{extra}")
    return 0


def _stream_info(camera, frame) -> dict:
    """Streams as the camera reports them, or as seen in a frame for cameras that don't say."""
    info = getattr(camera, "stream_info", None)
    if callable(info):
        return info()
    h, w = frame.color.shape[:2]
    fps = getattr(getattr(getattr(camera, "sim", None), "config", None), "control_hz", None)
    depth = None if frame.depth is None else {"width": w, "height": h, "fps": fps, "format": "z16"}
    return {"color": {"width": w, "height": h, "fps": fps, "format": "rgb8"}, "depth": depth}


def _depth_stats(depths: list[np.ndarray], scale_m: float) -> dict:
    """Valid fraction over all frames; median depth (metres) of the last frame's valid pixels."""
    valid = sum(int(np.count_nonzero(d)) for d in depths)
    last = depths[-1]
    nonzero = last[last > 0]
    median = round(float(np.median(nonzero)) * float(scale_m), 4) if nonzero.size else None
    return {"depth_valid_fraction": round(valid / sum(d.size for d in depths), 4), "depth_median_m": median}


def probe_source(source: str, frames: int) -> dict:
    """Open `source`, read up to `frames` frames, and report what came out (DESIGN.md fields)."""
    from robot_io.cameras.realsense import RecordingEnded
    from robot_io.cameras.registry import make_camera

    if frames < 1:
        raise CameraError("--frames must be at least 1")
    camera = make_camera(source)
    t0 = time.monotonic()
    camera.connect()
    open_s = time.monotonic() - t0
    read, raw_depths = [], []
    try:
        t0 = time.monotonic()
        for _ in range(frames):
            try:
                read.append(camera.read())
            except RecordingEnded:
                break
            raw = getattr(camera, "last_raw_depth", None)  # RealSense: depth before alignment
            if raw is not None:
                raw_depths.append(raw)
        read_s = time.monotonic() - t0
        if not read:
            raise CameraError(f"{source} delivered no frames")
        streams = _stream_info(camera, read[-1])
    finally:
        camera.disconnect()
    last = read[-1]
    report = {
        "source": source,
        "color": streams["color"],
        "depth": streams["depth"],
        "frames_read": len(read),
        "depth_scale_m": None,
        "depth_valid_fraction": None,
        "depth_median_m": None,
        "intrinsics": {k: getattr(last.intrinsics, k) for k in ("width", "height", "fx", "fy", "ppx", "ppy")},
        "open_ms": round(1000 * open_s, 1),
        "read_ms_mean": round(1000 * read_s / len(read), 2),
    }
    depths = [f.depth for f in read if f.depth is not None]
    if depths:
        report["depth_scale_m"] = float(last.depth_scale_m)
        # Depth quality is the sensor's: for a RealSense that is the depth image before it is
        # aligned to colour (alignment reprojects and fills in pixels); for other sources the
        # frames' own depth. The aligned figures, what the policy sees, are reported beside it.
        measured = raw_depths or depths
        report.update(_depth_stats(measured, last.depth_scale_m))
        if raw_depths:
            aligned = _depth_stats(depths, last.depth_scale_m)
            report["depth_valid_fraction_aligned"] = aligned["depth_valid_fraction"]
            report["depth_median_m_aligned"] = aligned["depth_median_m"]
    return report


def _probe(args: argparse.Namespace) -> int:
    report = probe_source(args.source, args.frames)
    logger.debug("probe: {}", report)
    if args.json:
        print(json.dumps(report))
        return 0
    c, d = report["color"], report["depth"]
    print(f"{report['source']}: {report['frames_read']} frames read, {report['read_ms_mean']} ms/frame")
    print(f"  color  {c['width']}x{c['height']} {c['format']} @ {c['fps']} fps")
    if d is None:
        print("  depth  none")
    else:
        print(
            f"  depth  {d['width']}x{d['height']} {d['format']} @ {d['fps']} fps, scale {report['depth_scale_m']:.4g} m, "
            f"{100 * report['depth_valid_fraction']:.1f}% valid, median {report['depth_median_m']} m"
        )
    return 0
