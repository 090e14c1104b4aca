"""Explicit Runge–Kutta integrators for any ``rate(state) -> d state/dt`` (model-agnostic).

    from meshgnn.integrators import get_method, rk_step
    y_next = rk_step(model_rate, y, "heun3", dt=1.0, constrain=impose_dirichlet)

Methods are data (:class:`Tableau`); :func:`rk_step` is the one stepper. See docs/design.md, "Integrators".
"""
from .methods import METHODS, get_method, receptive_field_hops
from .stepper import integrate, rk_stages, rk_step
from .tableau import Tableau, TableauError, load_tableau

__all__ = ["METHODS", "Tableau", "TableauError", "get_method", "integrate", "load_tableau",
           "receptive_field_hops", "rk_stages", "rk_step"]
