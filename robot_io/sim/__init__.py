"""The MuJoCo tabletop: scenes, task families, the scripted oracle and the simulator itself.

`TabletopSim` (env.py) is the entry point; `make_sim_rig()` returns a simulator shared by a
`SimArm` and a `SimCamera`, which is how the console and the CLI drive it.
"""

from __future__ import annotations

from robot_io.sim.tasks import (
    FAMILIES,
    SPLITS,
    TaskError,
    TaskSpec,
    sample_task,
    task_from_dict,
    task_from_instruction,
)

__all__ = [
    "FAMILIES",
    "SPLITS",
    "TaskError",
    "TaskSpec",
    "make_sim_rig",
    "sample_task",
    "task_from_dict",
    "task_from_instruction",
]


def make_sim_rig(config=None, width: int | None = None, height: int | None = None):
    """(sim, arm, camera) sharing one TabletopSim, both devices connected. Imports MuJoCo only when called."""
    from robot_io.arms.sim_arm import SimArm
    from robot_io.cameras.sim_camera import SimCamera
    from robot_io.sim.env import SimConfig, TabletopSim

    sim = TabletopSim(config or SimConfig())
    arm, camera = SimArm(sim), SimCamera(sim, width, height)
    arm.connect()
    camera.connect()
    return sim, arm, camera
