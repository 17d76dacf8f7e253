"""Compose the console's devices and policy from `--camera/--arm/--model` using the registries of
`robot_io` and `rt2_cot`. No device or model logic lives here: only which factory to call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from rt2_cot.errors import ConfigError


@dataclass
class Rig:
    camera: Any
    arm: Any
    shield: Any
    sim: Any = None  # the shared TabletopSim when the camera or the arm is simulated


def _sim_rig() -> tuple[Any, Any, Any]:
    """One TabletopSim shared by the sim arm and the sim camera (they must see the same world)."""
    import robot_io.sim as sim_pkg

    make = getattr(sim_pkg, "make_sim_rig", None)
    if make is not None:
        return make()
    from robot_io.arms.sim_arm import SimArm
    from robot_io.cameras.sim_camera import SimCamera
    from robot_io.sim.env import TabletopSim

    sim = TabletopSim()
    return sim, SimArm(sim), SimCamera(sim)


def build_rig(camera_spec: str, arm_spec: str) -> Rig:
    """Devices for the console, connected, with the arm behind a safety shield."""
    from robot_io.safety import SafetyLimits, SafetyShield

    sim = sim_arm = sim_camera = None
    if camera_spec == "sim" or arm_spec == "sim":
        sim, sim_arm, sim_camera = _sim_rig()
    if camera_spec == "sim":
        camera = sim_camera
    else:
        from robot_io.cameras.registry import make_camera

        # A recording in the console behaves like a live camera: recorded pace, looping. (Played
        # as fast as possible, the preview alone would run a short recording out in seconds.)
        extra = {"real_time": True, "loop": True} if camera_spec.startswith("file:") else {}
        camera = make_camera(camera_spec, **extra)
    if arm_spec == "sim":
        arm = sim_arm
    else:
        from robot_io.arms.registry import make_arm

        arm = make_arm(arm_spec)
    _connect(camera)
    _connect(arm)
    logger.info("camera {} and arm {} connected", camera_spec, arm_spec)
    return Rig(camera=camera, arm=arm, shield=SafetyShield(arm, SafetyLimits()), sim=sim)


def _connect(device: Any) -> None:
    # Factories may hand back devices already connected; connect() is documented as idempotent
    # for none of them, so only call it on devices that say they are not connected.
    if getattr(device, "connected", False) or getattr(device, "is_connected", False):
        return
    device.connect()


def build_policy(model_spec: str, rig: Rig, replan_every: int, hold_reference: bool = True) -> Any:
    """`oracle` (scripted, needs the simulator) or any `--model` spec through `load_backend`
    (`hold_reference`: see rt2_cot.vla_policy)."""
    if model_spec == "oracle":
        if rig.sim is None:
            raise ConfigError("--model oracle needs the simulator: use --camera sim --arm sim")
        from rt2_cot.oracle_policy import OraclePolicy

        return OraclePolicy(rig.sim)
    from rt2_cot.backends import load_backend
    from rt2_cot.vla_policy import VLAPolicy

    backend = load_backend(model_spec)
    return VLAPolicy(backend, replan_every=replan_every, hold_reference=hold_reference)
