"""What every handler of the app goes through: bad input becomes a one-line toast (never a traceback or an echo of a
megabyte), a value of the wrong type sent to a control is refused naming the control, and GPU work runs inside
`spaces.GPU` on a ZeroGPU Space (elsewhere that decorator is not there and nothing needs it)."""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging

import gradio as gr

from app_limits import ARRIVAL_HEADER
from app_text import one_line
from merging.service.turns import Abandoned
from merging.state import MergeError, quoted

log = logging.getLogger("merge-lab")

try:  # on a ZeroGPU Space the decorated calls get a GPU
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn


@contextlib.contextmanager
def _reported(name: str):
    """Bad input becomes a toast with the library's message; anything unexpected a short one (logged)."""
    try:
        yield
    except (gr.Error, Abandoned):
        raise
    except MergeError as error:
        raise gr.Error(one_line(str(error)), print_exception=False) from None
    except Exception as error:  # keep serving: report, log, and leave the page as it was
        log.exception("unexpected error in %s", name)
        raise gr.Error(one_line(f"unexpected error ({type(error).__name__}): {error}")) from None


def toasts(fn):
    """Errors of `fn` (a function or a generator of updates) as toasts (see `_reported`); a generator whose work
    nobody waits for any more (`Abandoned`) just ends."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                with _reported(fn.__name__):
                    yield from fn(*args, **kwargs)
            except Abandoned:
                return

        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _reported(fn.__name__):
            return fn(*args, **kwargs)

    return wrapper


def flag(value: object, name: str) -> bool:
    """A checkbox's value: True or False only ("yes", 1 or a dict sent by a client are refused)."""
    if isinstance(value, bool):
        return value
    raise MergeError(f"{name}: true or false, not {quoted(value)}")


def release_of(request: gr.Request | None, session) -> tuple[str, int | None]:
    """(owner, arrival number) of a request: the browser session (or, without one, this session value) and the
    number the server gave the request when it arrived (None when it did not pass through the server)."""
    owner = request.session_hash if request is not None and request.session_hash else str(id(session))
    number = request.headers.get(ARRIVAL_HEADER.decode()) if request is not None else None
    return owner, int(number) if number and number.isdigit() else None


def handler(fn):
    """A handler that computes: on the GPU where there is one, errors as toasts."""
    return gpu(toasts(fn))


def one_line_input_errors(demo: gr.Blocks) -> None:
    """A control's value of the wrong type (an API client's) gets a one-line message naming the control, not
    an unlabelled error and a traceback in the log; Gradio's own refusals are cut to one line too."""
    for block in demo.blocks.values():
        if isinstance(block, gr.components.Component) and hasattr(block, "preprocess"):
            block.preprocess = _checked_preprocess(block, block.preprocess)


def _checked_preprocess(block, preprocess):
    @functools.wraps(preprocess)
    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error as error:
            raise gr.Error(one_line(str(error.message)), print_exception=False) from None
        except Exception:
            name = getattr(block, "label", None) or type(block).__name__
            raise gr.Error(one_line(f"{name}: {type(payload).__name__} value {quoted(payload)} is not accepted"),
                           print_exception=False) from None

    return checked
