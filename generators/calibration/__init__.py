"""Calibration: measure from a user's own micrographs what the simulation must match (CTF, information limit,
noise, carbon texture) and propose a generation config that spans it."""
