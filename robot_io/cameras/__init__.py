"""Cameras behind one interface: RealSense (live, playback, recording), webcam, image folder, simulator."""
