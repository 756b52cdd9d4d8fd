"""What every handler of the app goes through: bad input becomes a one-line toast (never a traceback or an echo of a
megabyte), every value an event brings is checked before use (a value of the wrong type sent to a control is refused
naming the control, a file value must be a file uploaded to this server), work is done on behalf of the event's
session (its exports are its own), and GPU work runs inside `spaces.GPU` on a ZeroGPU Space (elsewhere that decorator
is not there and nothing needs it)."""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import weakref

import gradio as gr
from gradio.context import LocalContext
from gradio.data_classes import FileData

from app_limits import ARRIVAL_HEADER
from app_text import one_line
from merging.service.exports import owned_by
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
        with _reported(fn.__name__), owned_by(_session_hash()):
            return fn(*args, **kwargs)

    return wrapper


def _session_hash() -> str | None:
    """The browser (or gradio_client) session of the event being handled on this thread, if any."""
    return getattr(LocalContext.request.get(None), "session_hash", None)


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
    """Every event's values are checked before use: too few values, a file value that is not a file uploaded to this
    server (a URL, a plain string, a path outside Gradio's cache and the allowed folders), and a control's value of the
    wrong type (an API client's) get a one-line message naming the event or the control, not an unlabelled error and a
    traceback in the log; Gradio's own refusals are cut to one line too. A control an event updated for one session
    (the group chooser after /align) is that session's own copy, checked the same way."""
    ids = {id(block): key for key, block in demo.blocks.items()}
    checked: weakref.WeakSet = weakref.WeakSet()
    for block in demo.blocks.values():
        _check_preprocess(block, checked)
    preprocess_data = demo.preprocess_data

    @functools.wraps(preprocess_data)
    async def checked_preprocess_data(block_fn, inputs, state, *args, **kwargs):
        event = block_fn.api_name or block_fn.name
        if not isinstance(inputs, list) or len(inputs) < len(block_fn.inputs):
            given = len(inputs) if isinstance(inputs, list) else quoted(inputs)
            raise gr.Error(f"{event}: {len(block_fn.inputs)} values expected, not {given}", print_exception=False)
        for block, value in zip(block_fn.inputs, inputs):
            refusal = _file_refusal(demo, block, value)
            if refusal:
                raise gr.Error(one_line(refusal), print_exception=False)
            if state is not None and not block.stateful:
                _check_preprocess(state.get(ids[id(block)]), checked)
        try:
            return await preprocess_data(block_fn, inputs, state, *args, **kwargs)
        except gr.Error as error:
            raise gr.Error(one_line(str(error.message)), print_exception=False) from None
        except Exception as error:
            raise gr.Error(one_line(f"{event}: a value was not accepted ({type(error).__name__})"),
                           print_exception=False) from None

    demo.preprocess_data = checked_preprocess_data


def _name(block) -> str:
    """A control's name for a message: its label up to any explanation ("clip (at most 30 s…)" -> "clip")."""
    label = getattr(block, "label", None) or type(block).__name__
    return label.split(" (", 1)[0].split(": ", 1)[0]


def _file_refusal(demo: gr.Blocks, block, value) -> str | None:
    """Why a file control's value is refused before Gradio touches it (it would fetch a URL), or None."""
    model = getattr(block, "data_model", None)
    if value is None or not (isinstance(model, type) and issubclass(model, FileData)):
        return None
    path = value.get("path") if isinstance(value, dict) else None
    if not isinstance(path, str) or not path:
        return f"{_name(block)}: a file uploaded to this server, not {type(value).__name__} {quoted(value)}"
    if "://" in path:
        return f"{_name(block)}: a URL is not accepted ({quoted(path)}): upload the file"
    folders = [demo.GRADIO_CACHE, *demo.allowed_paths]
    if not any(_inside(path, folder) for folder in folders):
        return f"{_name(block)}: {quoted(path)} was not uploaded to this server: upload the file"
    return None


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:
        return False


def _choice_refusal(block, payload) -> str | None:
    """Why a choice control refuses `payload`, quoting it briefly (Gradio's own message echoes it whole), or None."""
    choices = [value for _, value in getattr(block, "choices", None) or []]
    shown = ", ".join(map(str, choices[:6])) + (", …" if len(choices) > 6 else "")
    if isinstance(block, gr.CheckboxGroup):  # Gradio would read "ffn" as f, f, n
        if isinstance(payload, list):
            return None
        return f"{_name(block)}: a list of {shown}, not {type(payload).__name__} {quoted(payload)}"
    closed = isinstance(block, (gr.Dropdown, gr.Radio)) and not getattr(block, "allow_custom_value", False)
    if closed and not getattr(block, "multiselect", False) and payload is not None and payload not in choices:
        return f"{_name(block)}: {quoted(payload)} is not in the list of choices ({shown or 'none yet'})"
    return None


def _check_preprocess(block, checked: weakref.WeakSet) -> None:
    """Wrap `block.preprocess` (once) so that a wrong value is refused in one line naming the control."""
    if not isinstance(block, gr.components.Component) or not hasattr(block, "preprocess") or block in checked:
        return
    checked.add(block)
    preprocess = block.preprocess

    @functools.wraps(preprocess)
    def checked_preprocess(payload):
        refusal = _choice_refusal(block, payload)
        if refusal:
            raise gr.Error(one_line(refusal), print_exception=False)
        try:
            return preprocess(payload)
        except gr.Error as error:
            raise gr.Error(one_line(str(error.message)), print_exception=False) from None
        except Exception:
            message = f"{_name(block)}: {type(payload).__name__} value {quoted(payload)} is not accepted"
            raise gr.Error(one_line(message), print_exception=False) from None

    block.preprocess = checked_preprocess
