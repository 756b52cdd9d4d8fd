"""The merge-method registry: each method declares its input roles, whether it takes an alignment, its
paper and its parameters as data; the CLI flags, the app's controls, validation and the benchmark's
method lists are derived from it. `merging.methods` fills it (import that module, not this one, to use it).
"""
from __future__ import annotations

import functools
import inspect
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from .state import MergeError, StateDict, quoted

Fn = TypeVar("Fn", bound=Callable[..., StateDict])
KINDS = ("float", "int", "choice", "flag", "floats", "pairs")


@dataclass(frozen=True)
class Param:
    """One parameter of a merge method.

    kind: "float" or "int" (a number in [low, high], an end excluded when `low_open`/`high_open`),
    "choice" (one of `choices`), "flag" (True or False), "floats" (one number per transformer layer, each in
    the range, or None) or "pairs" (one (speech, music) pair of numbers per transformer layer, or None).
    `label` is the short name a person sees (control, messages); `help` says in one line what it does;
    `step` is a control's resolution for a number (default: a hundredth of a finite range, 1 for an int).
    """

    name: str
    default: object
    help: str
    label: str = ""
    kind: str = "float"
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    step: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"parameter '{self.name}': kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.kind == "choice" and self.default not in self.choices:
            raise ValueError(f"parameter '{self.name}': default {self.default!r} is not one of its choices")
        if self.kind == "flag" and not isinstance(self.default, bool):
            raise ValueError(f"parameter '{self.name}': a flag's default is True or False")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def resolution(self) -> float:
        """A control's step for this number."""
        if self.step is not None:
            return self.step
        if self.kind == "int" or math.isinf(self.high - self.low):
            return 1.0 if self.kind == "int" else 0.01
        return 10 ** math.floor(math.log10((self.high - self.low) / 100))

    def same_control(self, other: Param) -> bool:
        """Whether `other` means the same and takes the same values (a page keeps its value when the method changes)."""
        return replace(self, default=None) == replace(other, default=None)

    @property
    def optional(self) -> bool:
        """Off unless given (e.g. per-layer values): a page control for it is refused by methods without it."""
        return self.default is None

    def interval(self) -> str:
        if self.kind == "choice":
            return "{" + ", ".join(self.choices) + "}"
        if self.kind == "flag":
            return "{true, false}"
        if self.kind == "int" and math.isinf(self.low) and math.isinf(self.high):
            return "an integer"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def values(self) -> str:
        """Valid values and default, e.g. '[0, 1], default 0.5'."""
        default = ("none" if self.default is None else str(self.default).lower() if isinstance(self.default, bool)
                   else f"{self.default:g}" if isinstance(self.default, float) else self.default)
        each = "each in " if self.kind in ("floats", "pairs") else ""
        return f"{each}{self.interval()}, default {default}"

    def describe(self) -> str:
        """One line: meaning, valid values and default."""
        return f"{self.help} ({self.values()})"

    def check(self, value, what: str = ""):
        """`value` as this parameter's type, or MergeError naming it (`what` prefixes the name)."""
        name = f"{what} {self.name}".strip()
        if self.kind in ("float", "int"):
            return self._scalar(value, name)
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise MergeError(f"{name} must be one of {', '.join(self.choices)}, got {quoted(value)}")
            return value
        if self.kind == "flag":
            if not isinstance(value, bool):  # "yes", 1 or a dict are not taken as true
                raise MergeError(f"{name} must be true or false, got {quoted(value)}")
            return value
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise MergeError(f"{name} must be a list with one entry per transformer layer, got {quoted(value)}")
        if self.kind == "floats":
            return [self._scalar(v, f"every {name} entry") for v in value]
        return [self._pair(pair, name) for pair in value]

    def _scalar(self, value, name: str):
        if self.kind == "int":
            try:
                number = operator.index(value)
            except TypeError:
                raise MergeError(f"{name} must be an integer, got {quoted(value)}") from None
            if isinstance(value, bool) or not self.low <= number <= self.high:
                raise MergeError(f"{name} must be an integer in {self.interval()}, got {quoted(value)}")
            return number
        try:
            x = float(value)
        except (TypeError, ValueError):
            x = math.nan
        inside = (self.low < x if self.low_open else self.low <= x) and (x < self.high if self.high_open else x <= self.high)
        if isinstance(value, (bool, str, bytes)) or not inside:  # "0.5" is text, not a number
            raise MergeError(f"{name} must be a number in {self.interval()}, got {quoted(value)}")
        return x

    def _pair(self, pair, name: str) -> tuple[float, float]:
        try:
            first, second = pair
        except (TypeError, ValueError):
            raise MergeError(f"{name} entries must be (speech, music) pairs, got {quoted(pair)}") from None
        return self._scalar(first, f"{name} speech"), self._scalar(second, f"{name} music")


@dataclass(frozen=True)
class Placement:
    """Where a method's merge sits on the speech–music axis, from its arguments (`params` names those it reads): a
    position in [0, 1] (0: its first input's side, 1: its second's) and a short label. `exact`: the ends are the
    inputs themselves (position 0 is the first input, 1 the second, as for an interpolation weight); otherwise the
    position only labels a mix of weights (a share of two task vectors) and is not a point between two known models."""

    params: tuple[str, ...]
    position: Callable[[Mapping[str, object]], float]
    label: Callable[[Mapping[str, object]], str]
    exact: bool


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., StateDict]
    inputs: tuple[str, ...]  # input roles, in the order of the function's positional parameters
    params: tuple[Param, ...]
    description: str
    paper: str = ""  # where the method comes from
    aligns: str | None = None  # the input whose Alignment (into the first input's basis) the method takes
    into: Callable[..., StateDict] | None = None  # the same merge written into preallocated weights (`writes_into`)
    placement: Placement | None = None  # None: not placed on the speech–music axis

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def defaults(self) -> dict[str, object]:
        return {p.name: p.default for p in self.params}

    @property
    def task_vector(self) -> bool:
        """Whether it merges task vectors (model − base) over a shared base."""
        return "base" in self.inputs

    @property
    def interpolates(self) -> bool:
        """Whether its merges lie between its two inputs, which are the axis's ends (see `Placement.exact`)."""
        return self.placement is not None and self.placement.exact

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def place(self, params: Mapping[str, object]) -> tuple[float, str] | None:
        """(position on the speech–music axis, label) of its merge with these arguments; None when not placed."""
        if self.placement is None:
            return None
        arguments = {**self.defaults, **params}
        return float(self.placement.position(arguments)), self.placement.label(arguments)

    def arguments(self, params: Mapping[str, object]) -> dict[str, object]:
        """Every parameter checked and completed with its default (plus the alignment, when it takes one)."""
        known = set(self.parameters) | ({"alignment"} if self.aligns else set())
        unknown = sorted(set(params) - known)
        if unknown:
            raise MergeError(f"method '{self.name}' has no parameter '{unknown[0]}': "
                             f"valid are {', '.join(self.parameters) or 'none'}")
        out = {p.name: p.check(params[p.name]) if p.name in params else p.default for p in self.params}
        if self.aligns:
            if params.get("alignment") is None:
                raise MergeError(f"method '{self.name}' needs an alignment of its {self.aligns} input "
                                 f"(run the alignment first)")
            out["alignment"] = params["alignment"]
        return out

    def __call__(self, *states: StateDict, **params) -> StateDict:
        return self.fn(*states, **self.arguments(params))


METHODS: dict[str, MergeMethod] = {}


def register(name: str, description: str, *, params: tuple[Param, ...] = (), paper: str = "",
             aligns: str | None = None, placed: Placement | None = None) -> Callable[[Fn], Fn]:
    """Decorator adding a method to METHODS. The function's positional parameters name its input roles;
    its keyword-only parameters are exactly `params` (plus `alignment` when it `aligns` an input), all
    without defaults: the decorated function checks its arguments and fills in the declared defaults.
    `placed` says where its merges sit on the speech–music axis (None: nowhere)."""

    def add(fn: Fn) -> Fn:
        old = METHODS.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"merge method '{name}' is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        signature = inspect.signature(fn).parameters.values()
        inputs = tuple(p.name for p in signature if p.kind is p.POSITIONAL_OR_KEYWORD)
        keywords = [p.name for p in signature if p.kind is p.KEYWORD_ONLY]
        declared = [p.name for p in params] + (["alignment"] if aligns else [])
        if sorted(keywords) != sorted(declared):
            raise ValueError(f"merge method '{name}': keyword parameters {keywords} differ from the declared {declared}")
        if aligns is not None and aligns not in inputs[1:]:
            raise ValueError(f"merge method '{name}': aligns '{aligns}', which is not one of its later inputs")
        if placed is not None and not set(placed.params) <= {p.name for p in params}:
            raise ValueError(f"merge method '{name}' is placed by {placed.params}, which are not all its parameters")
        method = MergeMethod(name, fn, inputs, tuple(params), description, paper, aligns, placement=placed)
        METHODS[name] = method

        @functools.wraps(fn)
        def checked(*states, **kwargs):
            return method(*states, **kwargs)

        return checked

    return add


def writes_into(name: str) -> Callable[[Fn], Fn]:
    """Decorator giving the registered method `name` a variant that writes its merge into preallocated weights
    (a reusable model's parameters): `fn(out, *inputs, **arguments, inputs_finite=False)` returns `out`."""

    def add(fn: Fn) -> Fn:
        METHODS[name] = replace(get_method(name), into=fn)
        return fn

    return add


def merge(method_name: str, inputs: dict[str, StateDict], **params) -> StateDict:
    """Run the named method on the state dicts given by role, e.g. merge("linear", {"speech": s, "music": m}, alpha=0.1)."""
    method = get_method(method_name)
    missing = [role for role in method.inputs if role not in inputs]
    extra = sorted(set(inputs) - set(method.inputs))
    if missing or extra:
        wrong = f"but '{missing[0]}' is missing" if missing else f"not '{extra[0]}'"
        raise MergeError(f"method '{method_name}' takes the inputs {', '.join(method.inputs)}, {wrong}")
    return method(*(inputs[role] for role in method.inputs), **params)


def get_method(name: str) -> MergeMethod:
    method = METHODS.get(name)
    if method is None:
        raise MergeError(f"unknown merge method '{name}': choose from {', '.join(METHODS)}")
    return method


def methods_with(name: str) -> list[str]:
    """The methods that have the parameter `name`."""
    return [m.name for m in METHODS.values() if name in m.parameters]


def all_params() -> dict[str, list[tuple[str, Param]]]:
    """Every parameter name in the registry, with (method, Param) for each method that has it."""
    found: dict[str, list[tuple[str, Param]]] = {}
    for method in METHODS.values():
        for param in method.params:
            found.setdefault(param.name, []).append((method.name, param))
    return found


def method_arguments(method_name: str, controls: Mapping[str, object]) -> dict[str, object]:
    """Control values (a page's sliders, a client's fields) as `method_name`'s checked arguments.

    Controls the method does not have are dropped (a page sends every slider), except an optional one
    (default None, such as per-layer α) that was set: that is refused, naming the methods that take it.
    None or an empty list means "not set"; parameters not given keep the method's default when it runs.
    """
    method = get_method(method_name)
    out = {}
    for name, value in controls.items():
        unset = value is None or (isinstance(value, (list, tuple)) and not value)
        if name in method.parameters:
            if not unset:
                out[name] = method.param(name).check(value)
        elif not unset and any(p.optional for _, p in all_params().get(name, [])):
            label = next(p.label for _, p in all_params()[name])
            raise MergeError(f"{label} applies to {_listed(methods_with(name))}, not to {method_name}: clear it")
    return out


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def shared_range(name: str) -> tuple[float, float]:
    """The values of parameter `name` that every method having it accepts (a page control's range)."""
    params = [param for _, param in all_params()[name]]
    return max(p.low for p in params), min(p.high for p in params)
