"""Stand-in for ``warp`` (see ../_standin.py): PhysicsNeMo imports it at import time; MeshGraphNet never runs it."""
import sys

from _standin import StandIn, stand_in

sys.modules[__name__].__class__ = StandIn
__version__ = "0.0.0+stand-in"
stand_in(__name__)
