"""A name -> class table for the places where the config chooses an implementation
(``model.backbone``, ``model.neck``)."""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Sequence, Type

from libs.common.errors import UserError


class Registry:
    """``@registry.register("name")`` adds a class; ``registry.build("name", **kw)`` makes one.

    ``config_key`` names the config key in the error for an unknown name; ``requires`` lists the
    attributes every built object must have (checked: a contract of ours, so an assert).
    """

    def __init__(self, kind: str, config_key: str, requires: Sequence[str] = ()):
        self.kind, self.config_key, self.requires = kind, config_key, tuple(requires)
        self._classes: Dict[str, Type] = {}

    def register(self, name: str) -> Callable[[Type], Type]:
        def wrap(cls: Type) -> Type:
            assert name not in self._classes, f"{self.kind} {name!r} registered twice"
            self._classes[name] = cls
            return cls
        return wrap

    def build(self, name: str, **kwargs):
        if name not in self._classes:
            raise UserError(f"unknown {self.kind} {name!r} ({self.config_key}): expected one of "
                            f"{', '.join(sorted(self._classes))}")
        obj = self._classes[name](**kwargs)
        missing = [a for a in self.requires if not hasattr(obj, a)]
        assert not missing, f"{self.kind} {name!r} lacks {missing}"
        return obj

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._classes))

    def __getitem__(self, name: str) -> Type:
        return self._classes[name]
