"""charrnn: character-level language modelling with recurrent networks.

Importing the package is cheap on purpose (no torch): `charrnn --help` must answer fast.
"""

__version__ = "0.1.0"
