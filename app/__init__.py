"""The Gradio operator console: live camera, streamed reasoning, closed-loop control, sessions,
reasoning tests. `python -m app --help`. Layout and rendering only; the runtime is `rt2_cot`,
the devices `robot_io`."""
