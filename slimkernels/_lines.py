"""Report lines of the command-line tools that never fail the command (a closed pipe, a full
disk, a name the stream cannot encode)."""
from __future__ import annotations

import os
import sys


def printable(text: str, stream) -> str:
    """``text`` as ``stream`` can encode it: characters it cannot (a file name's undecodable
    bytes, which Python keeps as lone surrogates) as backslash escapes, as stderr writes them."""
    enc = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(enc)
        return text
    except (UnicodeEncodeError, LookupError):
        return text.encode(enc, "backslashreplace").decode(enc, "replace")


class Lines:
    """Progress and report lines (``say(text, file=None)``: stdout, or ``file``) that never fail
    the command: a name the stream cannot encode is escaped (:func:`printable`), each line is
    flushed (a pipe sees it at once), and once stdout is gone (a closed pipe, e.g. ``| head``, or
    a full disk) its lines are dropped and stdout goes to the null device (so that the exit's
    flush does not fail either). Before, printing such a line raised inside a batch, which
    then removed the outputs it had written."""

    def __init__(self, write=print):
        self.write = write
        self.stdout_gone = False

    def __call__(self, text: str, file=None) -> None:
        stream = file if file is not None else sys.stdout
        if file is None and self.stdout_gone:
            return
        try:
            self.write(printable(text, stream), file=file)
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            if file is not None:
                return   # (stderr gone: nothing to tell it with)
            self.stdout_gone = True
            try:
                fd = os.open(os.devnull, os.O_WRONLY)
                os.dup2(fd, sys.stdout.fileno())
                os.close(fd)
            except (OSError, ValueError, AttributeError):
                pass
