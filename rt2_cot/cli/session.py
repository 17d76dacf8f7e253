"""`rt2-cot session`: check, list, export and recover recorded sessions (LeRobot v3.0 folders).

rt2-cot session check DIR [--decode] [--json]     exit 1 with one line per problem when broken
rt2-cot session list [ROOT] [--json]              sessions inside ROOT (default ./sessions)
rt2-cot session export DIR [--episode N] --out PATH   .zip, or a new folder
rt2-cot session recover DIR                       close an episode a crash left open
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate layout, metadata, frame counts, timestamps, schema")
    check.add_argument("dir", type=Path, help="session folder")
    check.add_argument("--decode", action="store_true", help="also decode every video frame (slower)")
    check.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    lst = sub.add_parser("list", help="list the sessions in a folder")
    lst.add_argument(
        "root", type=Path, nargs="?", default=Path("sessions"), help="sessions folder (default ./sessions)"
    )
    lst.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    export = sub.add_parser("export", help="export a session or one episode as a LeRobot v3.0 dataset")
    export.add_argument("dir", type=Path, help="session folder")
    export.add_argument(
        "--episode", type=int, default=None, help="episode index (default: the whole session)"
    )
    export.add_argument(
        "--out", type=Path, required=True, help="PATH.zip, or a folder that does not exist yet"
    )
    export.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    recover = sub.add_parser(
        "recover", help="commit an episode left open by a crash (marked end_reason=crash)"
    )
    recover.add_argument("dir", type=Path, help="session folder")
    recover.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from rt2_cot.sessions import SessionDataset, SessionError, check_session, list_sessions, recover

    if args.action == "check":
        report = check_session(args.dir, decode=args.decode)
        if args.json:
            print(json.dumps(report.to_dict()))
        else:
            for warning in report.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            if report.ok:
                print(
                    f"ok: {args.dir}: {report.episodes} episodes, {report.frames} frames, videos {report.video_frames}"
                )
        if not report.ok:
            for problem in report.problems:
                print(f"error: {args.dir}: {problem}", file=sys.stderr)
            return 1
        return 0
    if args.action == "list":
        sessions = list_sessions(args.root)
        if args.json:
            print(json.dumps({"root": str(args.root), "sessions": sessions}))
        elif not sessions:
            print(f"no sessions in {args.root}")
        else:
            for s in sessions:
                state = " (recording or needs recovery)" if s["in_progress"] else ""
                detail = (
                    s.get("error")
                    or f"{s.get('episodes', 0)} episodes, {s.get('frames', 0)} frames at {s.get('fps')} fps"
                )
                print(f"{s['name']}\t{detail}{state}")
        return 0
    if args.action == "export":
        if not (args.dir / "meta" / "info.json").is_file():
            raise SessionError(f"{args.dir} is not a session folder (no meta/info.json)")
        out = SessionDataset(args.dir).export(args.episode, args.out)
        if args.json:
            print(json.dumps({"session": str(args.dir), "episode": args.episode, "out": str(out)}))
        else:
            print(
                f"exported {'episode ' + str(args.episode) if args.episode is not None else 'session'} to {out}"
            )
        return 0
    if args.action == "recover":
        if not args.dir.is_dir():
            raise SessionError(f"session folder {args.dir} does not exist")
        written = recover(args.dir)
        if args.json:
            print(json.dumps({"session": str(args.dir), "recovered_episodes": written}))
        else:
            print(f"recovered episodes {written}" if written else "nothing to recover")
        return 0
    return 2
