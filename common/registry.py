"""Name → object registries for every family researchers extend.

A registry maps a string (used in configs and on the command line) to a callable
or object. Registering is a decorator; a lookup miss raises an error that lists
the valid names, so a typo in a config is caught with its fix in the message.

Example:
    >>> LOSSES = Registry("preference loss")
    >>> @LOSSES.register("dpo")
    ... def dpo_loss(margin, beta):
    ...     return -jax.nn.log_sigmoid(beta * margin)
    >>> LOSSES.get("dpo") is dpo_loss
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry has no entry of the requested name.

    A ``KeyError`` so ``except KeyError`` works, with a readable message (plain
    ``KeyError`` would print the message in quotes).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A named family of entries, e.g. ``Registry("optimizer")``.

    Args:
      family: what the entries are, used in error messages ("unknown optimizer ...").
    """

    def __init__(self, family: str):
        self.family = family
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator adding an entry under ``name`` (default: the object's ``__name__``).

        Registering a name twice is an error unless ``overwrite=True``, so two
        modules cannot silently shadow each other.
        """

        def decorator(obj: T) -> T:
            key = name if name is not None else getattr(obj, "__name__", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.family} registry: name must be a non-empty string, "
                                 f"got {key!r}")
            if key in self._entries and not overwrite and self._entries[key] is not obj:
                raise ValueError(f"{self.family} {key!r} is already registered; pass "
                                 "overwrite=True to replace it")
            self._entries[key] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Register ``obj`` under ``name`` without decorator syntax."""
        return self.register(name, overwrite=overwrite)(obj)

    def unregister(self, name: str) -> T:
        """Remove the entry called ``name`` and return it (tests and plugins that register
        for a limited time); raises ``UnknownNameError`` listing valid names if absent."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``; raises ``UnknownNameError`` listing valid names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UnknownNameError(
                f"unknown {self.family} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {self.names()})"
