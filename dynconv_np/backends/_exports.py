"""How a backend package exposes the interface: each member bound from the one topic
module that defines it, so the package's namespace is the contract by construction."""

from __future__ import annotations

from types import ModuleType

from .interface import full_api


def export_interface(namespace: dict, modules: tuple[ModuleType, ...]) -> list[str]:
    """Bind in `namespace` (a package's ``globals()``) every member of
    :func:`~dynconv_np.backends.interface.full_api` that the package does not bind
    itself to the function of that name defined in one of `modules` (imported names do
    not count); returns every member's name, in the interface's order.

    Raises ``ImportError`` when a member is defined by none of the modules or by
    several: a backend that does not implement the interface cannot be imported.
    """
    names = list(full_api())
    for name in names:
        if name in namespace:
            continue
        found = [m for m in modules if getattr(getattr(m, name, None), "__module__", None) == m.__name__]
        if len(found) != 1:
            where = ", ".join(m.__name__ for m in found) or "none of its modules"
            raise ImportError(f"{namespace['__name__']}: interface member {name} is defined by {where}")
        namespace[name] = getattr(found[0], name)
    return names
