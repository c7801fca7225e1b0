"""Suite-wide settings, applied before any test imports torch."""
import os

# Spin-waiting OpenMP threads make torch steps ~20x slower when the cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
