"""A permissive stand-in module: every attribute is an inert object that can be called, subscripted, used as a
decorator or base class. For packages PhysicsNeMo imports at import time but whose code MeshGraphNet never runs
(warp-lang: a 149 MB wheel over the GPU machine's transfer limit; s3fs: remote files)."""
import importlib.machinery
import sys
import types


class Inert:
    def __init__(self, name="inert"):
        self._name = name

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]          # used as a decorator: keep the function, never run through warp
        return Inert(self._name + "()")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Inert(f"{self._name}.{name}")

    def __getitem__(self, key):
        return Inert(self._name + "[]")

    def __mro_entries__(self, bases):
        return (object,)

    def __or__(self, other):
        return self

    __ror__ = __or__

    def __repr__(self):
        return f"<stand-in {self._name}>"


class StandIn(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = Inert(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


def install(name):
    module = StandIn(name)
    module.__path__ = []
    module.__version__ = "0.0.0+stand-in"
    sys.modules[name] = module
    return module


class _Finder:
    """Serves ``import ROOT.any.sub.module`` for the stood-in roots."""

    roots = set()

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.split(".")[0] in cls.roots and "." in fullname:
            return importlib.machinery.ModuleSpec(fullname, cls)
        return None

    @staticmethod
    def create_module(spec):
        module = StandIn(spec.name)
        module.__path__ = []
        return module

    @staticmethod
    def exec_module(module):
        pass


def stand_in(root):
    _Finder.roots.add(root)
    if _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)
