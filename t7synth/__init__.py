"""t7synth: synthesise 7T-quality T1-weighted brain MRI from 3T scans.

Importing the package is cheap and side-effect free: no network, no GPU and no disk
access happen until a command or a class is used.
"""

__version__ = "0.1.0"
