"""Can the model act when it is handed the right plan? And does the way steps execute matter?

`rt2-cot eval` runs the console's control loop behind the safety shield. This probe strips that
down to the model and the simulator, to separate three reasons a closed-loop episode fails:

  - reasoning / localisation: the model's own plan names or points at the wrong thing
    (`--plan oracle` gives it the simulator's grounded plan, as `rt2-cot eval --plan-source oracle`);
  - acting: the eight action tokens do not get the gripper onto the object (`--readout` compares
    reading the motion bins at their argmax or at their expected value);
  - dynamics: the shield limits the gripper to 0.5 a step, so a close takes two steps
    (`--gripper-rate 0.5`, what eval and the console do) where unshielded data closed in one
    (`--gripper-rate 1`).

Each episode samples a task of `--family` and a scene from `--seed`; the model (fast built-in path,
greedy) acts until it terminates or `--max-steps`; every command goes through the safety shield's
clipping (`robot_io.safety.clip_command`, default limits but the gripper rate); success is the
simulator's predicate. A model trained with the gripper's opening in its prompt is told it.

    python benchmarks/acting_probe.py --model runs/default/checkpoint --plan oracle \\
        --readout expected --gripper-rate 0.5 --family pick --episodes 10

Prints one JSON object: settings, successes, episodes, success rate, mean steps, and what happened at
each episode's first close (`first_close`: within the grasp radius? then held still and closed
again, as the oracle does while the shield closes the gripper halfway?), how episodes ended (`ends`:
success, step limit, terminated with the gripper half open, terminated otherwise) and in how many
the target was held at some step (`held_target`). `--trace` adds one
line a step on stderr: fingertips minus target (cm), gripper, and the decoded command.
`--finish-open` counts the episodes that ended with the gripper half open and would succeed had it
opened fully (`rescued_by_opening`; success itself is judged at termination, as in eval).
`--finish-close` stands in for a model that knew the gripper's opening: whenever the gripper is
half-closed, the probe closes it (holding still) before the model acts again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere


def run(args: argparse.Namespace) -> dict:
    import torch

    from robot_io.safety import SafetyLimits, clip_command
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.oracle import place_point
    from robot_io.sim.tasks import sample_task
    from robot_io.types import EndEffectorCommand
    from rt2_cot.action_codec import ActionCodec
    from rt2_cot.backends import load_backend
    from rt2_cot.backends.base import GenerationRequest
    from rt2_cot.data.grounding import ground_plan, scene_points
    from rt2_cot.step import run_step

    torch.set_num_threads(1)
    limits = SafetyLimits(max_gripper_change=args.gripper_rate)
    backend = load_backend(args.model, action_readout=args.readout, precision=args.precision)
    sim, codec, rng = TabletopSim(), ActionCodec(), np.random.default_rng(args.seed)
    wins, steps = 0, []
    # The first close of each episode: was it within the grasp radius, and did the model then hold
    # still and close again (what the oracle does while the shield lets the gripper close halfway)?
    closes = {"closed": 0, "within_grasp_radius": 0, "held_and_closed_again": 0}
    # How episodes end; and for carry tasks (near / on goals) whether the target was ever held.
    ends = {"success": 0, "step_limit": 0, "terminated_half_open": 0, "terminated_other": 0}
    held_target, rescued = 0, 0
    for _ in range(args.episodes):
        task = sample_task(rng, family=None if args.family == "any" else args.family)
        sim.reset(task, seed=int(rng.integers(1_000_000_000)))
        taken, closed_at, held, terminated_at, asked = 0, None, False, None, None
        while taken < args.max_steps:
            taken += 1
            frame = sim.render()
            plan = None
            if args.plan == "oracle":
                h, w = frame.color.shape[:2]
                plan = ground_plan(
                    task.plan, task.target, task.reference, scene_points(sim, w, h), task.tiles
                )
            request = GenerationRequest(
                image=frame.color,
                instruction=task.instruction,
                prompt_style="cot",
                given_plan=plan,
                gripper=sim.gripper,  # stated only to models trained with it (gripper_in_prompt)
                gripper_command=asked,  # likewise (gripper_motion_in_prompt)
                ee_xyz=tuple(sim.ee_state().ee_xyz_m),  # likewise (position_in_prompt)
            )
            command = run_step(backend, request, codec).command
            asked = None if command is None else command.gripper
            if args.finish_close and 0.0 < sim.gripper < 1.0 and command is not None:
                # Diagnostic: a half-closed gripper is finished as the oracle would (hold still, close
                # again), standing in for a model that knew the gripper's opening.
                command = EndEffectorCommand(gripper=0.0)
            if args.trace:  # where the fingertips are against the target, and what the model did
                ee, obj = sim.ee_state().ee_xyz_m, sim.object_position(task.target)
                # For carry tasks: the target's distance from where the oracle would put it down.
                to_place = None if task.goal == "lift" else float(np.hypot(*(obj[:2] - place_point(sim))))
                print(
                    json.dumps(
                        {
                            "step": taken,
                            "ee_minus_target_cm": [round(100 * float(v), 1) for v in ee - obj],
                            "target_to_place_cm": None if to_place is None else round(100 * to_place, 1),
                            "ee_height_cm": round(100 * float(ee[2]), 1),
                            "goal_reached": sim.goal_reached(),
                            "gripper": round(sim.gripper, 2),
                            "command": None
                            if command is None
                            else [
                                round(float(v), 3)
                                for v in (*command.delta_xyz_m, command.gripper, command.terminate)
                            ],
                        }
                    ),
                    file=sys.stderr,
                )
            if command is not None and closed_at is not None and taken == closed_at + 1:
                closes["held_and_closed_again"] += int(
                    command.gripper < 0.5 and abs(command.delta_xyz_m[2]) < 0.01
                )
            if command is not None and closed_at is None and command.gripper < 0.5:
                closed_at = taken
                offset = sim.ee_state().ee_xyz_m[:2] - sim.object_position(task.target)[:2]
                closes["closed"] += 1
                closes["within_grasp_radius"] += int(np.hypot(*offset) <= sim.config.grasp_radius_m)
            held = held or sim.held == task.target
            if command is None or command.terminate:
                terminated_at = sim.gripper
                break
            # Through the safety shield's clipping, as eval and the console execute every action.
            command, _notes = clip_command(command, sim.ee_state(), limits)
            sim.apply(command)
        won = bool(sim.success())
        wins += won
        steps.append(taken)
        held_target += held
        if args.finish_open and not won and terminated_at is not None and 0.0 < terminated_at < 1.0:
            # Diagnostic: the model stopped with the gripper half open (the shield opens it in two
            # steps); would the task be done had it opened fully? One step, no motion, then judge.
            command, _notes = clip_command(EndEffectorCommand(gripper=1.0), sim.ee_state(), limits)
            sim.apply(command)  # through the shield's clipping too, like every step above
            rescued += bool(sim.success())
        if won:
            ends["success"] += 1
        elif terminated_at is None:
            ends["step_limit"] += 1
        elif 0.0 < terminated_at < 1.0:  # stopped while the shield was still moving the gripper
            ends["terminated_half_open"] += 1
        else:
            ends["terminated_other"] += 1
    return {
        "model": args.model,
        "plan": args.plan,
        "readout": args.readout,
        "precision": args.precision,
        "gripper_rate": args.gripper_rate,
        "finish_close": args.finish_close,
        "family": args.family,
        "seed": args.seed,
        "successes": wins,
        "episodes": args.episodes,
        "success_rate": round(wins / args.episodes, 3),
        "mean_steps": round(float(np.mean(steps)), 1),
        "first_close": closes,
        "ends": ends,
        "held_target": held_target,
        **({"rescued_by_opening": rescued} if args.finish_open else {}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--plan", choices=["model", "oracle"], default="oracle")
    ap.add_argument(
        "--readout", choices=["argmax", "expected"], default=None, help="default: the checkpoint's"
    )
    ap.add_argument("--gripper-rate", type=float, default=0.5, help="max gripper change a step (shield: 0.5)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32", help="decoder precision")
    ap.add_argument("--family", default="pick", help="task family, or 'any'")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--trace", action="store_true", help="one JSON line a step on stderr")
    ap.add_argument(
        "--finish-close",
        action="store_true",
        help="diagnostic: a half-closed gripper is closed fully before the model acts again",
    )
    ap.add_argument(
        "--finish-open",
        action="store_true",
        help="diagnostic: after a failed episode the model ended with the gripper half open, open it "
        "fully (one step) and count whether the task is then done (rescued_by_opening)",
    )
    print(json.dumps(run(ap.parse_args())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
