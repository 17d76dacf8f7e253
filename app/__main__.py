"""`python -m app`: start the operator console.

Order matters: the bind/auth policy is checked before any device or model is touched, so a
console that must not start fails in milliseconds with one line; devices and the model load
before the web server opens, so the first page already shows live state.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from app.options import ConsoleOptions, add_arguments, options_from_args

SUITES_DIR = "prompts/suites"


def _recover_sessions(options: ConsoleOptions) -> None:
    """Close episodes left open by a crash (kill -9, power loss) before anyone browses them."""
    from loguru import logger

    try:
        from rt2_cot import sessions
    except ImportError:
        return
    recover = getattr(sessions, "recover", None)
    if recover is None or not options.sessions.is_dir():
        return
    for child in sorted(options.sessions.iterdir()):
        if child.is_dir() and not child.name.startswith((".", "_")):
            try:
                recover(child)
            except Exception as exc:  # one broken session must not stop the console
                logger.warning("could not recover session {}: {}", child.name, exc)


def serve(options: ConsoleOptions) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    import cv2
    from loguru import logger

    from app.rig import build_policy, build_rig

    # Preview images are small: OpenCV's worker threads would only fight the model for 2 cores.
    cv2.setNumThreads(1)
    # The model's Python-heavy decode loop holds the GIL; a shorter switch interval lets the web
    # server's threads (the E-stop click, the live view) in sooner, at a small cost in throughput.
    sys.setswitchinterval(0.001)
    from app.runtime import ConsoleRuntime

    options.sessions.mkdir(parents=True, exist_ok=True)
    _recover_sessions(options)
    rig = build_rig(options.camera, options.arm)
    policy = build_policy(options.model, rig, options.replan_every, options.hold_reference)
    runtime = ConsoleRuntime(
        rig.camera,
        rig.arm,
        rig.shield,
        policy,
        sim=rig.sim,
        sessions_root=options.sessions,
        rate_hz=options.rate_hz,
        max_steps=options.max_steps,
        preview_hz=options.preview_hz,
        replan_every=options.replan_every,
        model_name=options.model,
        camera_name=options.camera,
        arm_name=options.arm,
        seed=options.seed,
    )
    if rig.sim is not None:
        try:
            runtime.new_scene("startup", "startup")
            runtime.lease.release("startup")
        except Exception as exc:  # an unusable first scene is not fatal: the operator can retry
            logger.warning("could not set up the first scene: {}", exc)
    runtime.start()

    from app.layout import CSS, KEYBOARD_JS, build_ui, theme

    demo = build_ui(runtime, SUITES_DIR)
    demo.queue(default_concurrency_limit=4)
    done = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info("signal {}: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    demo.launch(
        server_name=options.host,
        server_port=options.port,
        auth=options.auth,
        auth_message="RT-2 CoT console: operators only.",
        # The browser may read exactly one folder: the recorded sessions (replays and exports).
        allowed_paths=[str(options.sessions.resolve())],
        prevent_thread_lock=True,
        show_error=True,
        quiet=True,
        ssr_mode=False,
        footer_links=["api"],
        theme=theme(),
        css=CSS,
        js=KEYBOARD_JS,
    )
    logger.info("console ready at http://{}:{}", options.host, options.port)
    try:
        done.wait()
    finally:
        runtime.shutdown()
        demo.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="RT-2 CoT operator console")
    add_arguments(parser)
    args = parser.parse_args(argv)
    from loguru import logger

    from robot_io.errors import RobotIOError
    from rt2_cot.errors import Rt2CotError

    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else os.environ.get("RT2_LOG_LEVEL", "INFO"))
    try:
        return serve(options_from_args(args))
    except (Rt2CotError, RobotIOError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, unreadable sessions folder
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
