"""Errors lenx raises for bad input: one clear message, raised before expensive work starts."""

import errno
import sys
from contextlib import contextmanager


class LenxError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback dump."""


class ConfigError(LenxError, ValueError):
    """An impossible or inconsistent configuration value (non-positive length, heads not dividing width, ...)."""


class CorpusError(LenxError):
    """A corpus that cannot be loaded: missing path, empty, not UTF-8, hub unreachable, too short."""


class OutOfRangeError(LenxError, IndexError):
    """A position past what a learned table holds. The evaluator records it as 'out of range' instead of failing."""


class CheckpointError(LenxError):
    """A missing, truncated or foreign checkpoint file."""


# errno values that mean "the output location cannot take more data", reported as one line, not a traceback
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM}


@contextmanager
def user_errors():
    """Entry points run inside this: a LenxError, or a write refused by the disk (full, read-only, no permission),
    prints one `lenx: error: ...` line and exits with status 2. Files lenx already wrote stay whole: every result
    and checkpoint file is replaced atomically (temporary file + rename), never truncated in place."""
    try:
        yield
    except LenxError as e:
        print(f"lenx: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"lenx: error: cannot write{where}: {e.strerror or e}. Results and checkpoints written before this "
              "are intact (atomic writes); free space or fix permissions, then rerun the same command to continue",
              file=sys.stderr)
        sys.exit(2)


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """`value` as an int >= minimum (booleans, floats and strings refused), else one ConfigError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return value


def instantiate_node(node, where: str, **kw):
    """hydra.utils.instantiate(node, **kw) with a failure inside as one error: a lenx error raised by the class
    itself as it is, anything else (a TypeError for a key the class does not take) as a ConfigError naming `where`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kw)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, LenxError):
            raise cause from None
        raise ConfigError(f"{where}: {str(cause).strip().splitlines()[0]}") from None
