"""User-facing errors and the wrapper that turns them into one clear line instead of a traceback."""
from __future__ import annotations

import gc
import sys
from typing import Callable

from loguru import logger


class SvcError(Exception):
    """An error caused by the user's input or files; its message is shown as is, without a traceback."""


class MissingPretrainedError(SvcError):
    """A pretrained weight file the user has to download is not where it is expected."""


class UnsafeFileError(SvcError):
    """A model file holds something other than plain tensors and the few inert types its format needs."""


class AudioError(SvcError):
    """An audio file cannot be read or holds unusable samples."""


class ConfigError(SvcError):
    """A config file is missing, unreadable or inconsistent."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's main(): SvcError and Ctrl-C end with a message and a non-zero exit, not a traceback.

    Before exiting, every object is moved out of the garbage collector's sight (gc.freeze): the collections of
    the interpreter's shutdown then skip the hundreds of thousands of objects torch creates at import, which
    took ~0.3 of the ~0.5 s a process spends exiting after `import torch` (measured). Files are closed where
    they are written, so nothing waits on a collection at exit."""
    try:
        code = main()
    except SvcError as error:
        logger.error(user_message(error))
        code = 1
    except KeyboardInterrupt:
        logger.warning("interrupted")
        code = 130
    gc.freeze()
    sys.exit(code or 0)


def user_message(error: SvcError) -> str:
    """The error's own message. An error raised in a DataLoader worker comes back with the worker's traceback
    as its text ("Caught X in DataLoader worker process 0. Original Traceback ... module.X: message"):
    only the original message is kept."""
    text = str(error).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
