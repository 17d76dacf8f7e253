"""rt2_cot: the VLA runtime. Action codec, prompts, constrained streaming decoding, backends,
policy and control loop, sessions, training, evaluation, benchmarks and the `rt2-cot` CLI."""

__version__ = "0.1.0"
