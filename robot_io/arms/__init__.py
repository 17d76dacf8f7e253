"""Arms behind one interface: the MuJoCo simulated arm and real drivers (xArm)."""
