"""Devices and simulation: cameras, arms, the MuJoCo tabletop and the safety shield.

Never imports torch or gradio: this package must stay usable on a robot's own small computer.
"""
