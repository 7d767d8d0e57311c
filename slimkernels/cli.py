"""The ``slimkernels`` command line.

Subcommands: ``env``, ``compress``, ``decompress``, ``info``, ``eval``, ``train``.
Exit codes: 0 success, 1 error (message on stderr), 2 usage error.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import sys
import time
import warnings
from typing import List, Optional, Tuple

from ._device import cli_device
from ._lines import Lines as _Lines
from ._checks import MAX_THREADS_PER_CPU, too_many_threads  # noqa: F401 (re-exported)
from ._version import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """An error to report in one line with exit code 1."""


def _err(msg: str) -> None:
    print(f"slimkernels: error: {msg}", file=sys.stderr)


# -- env ---------------------------------------------------------------------------------------
def env_report() -> str:
    """Human-readable versions, backend and capabilities of this install."""
    import torch

    from . import backend

    lines = [f"slimkernels {__version__}", f"python {platform.python_version()} ({sys.executable})",
             f"torch {torch.__version__}"]
    try:
        import triton
        lines.append(f"triton {triton.__version__} (interpreter: "
                     f"{'on' if backend.interpreter_enabled() else 'off'})")
    except ImportError:
        lines.append("triton: not installed")
    try:
        import numpy
        lines.append(f"numpy {numpy.__version__}")
    except ImportError:  # pragma: no cover
        pass
    cuda = torch.cuda.is_available()
    lines.append(f"CUDA GPU: {torch.cuda.get_device_name(0) if cuda else 'none'}")
    for dev in ("cpu", "cuda") if cuda else ("cpu",):
        try:   # (a SLIMKERNELS_BACKEND this machine cannot run: reported, not raised)
            lines.append(f"backend for {dev.upper()} tensors: {backend.current_backend(dev)}")
        except (RuntimeError, ValueError) as e:
            lines.append(f"backend for {dev.upper()} tensors: unusable ({e})")
    env = os.environ.get(backend.ENV_VAR)
    lines.append(f"{backend.ENV_VAR}: {env or '(unset)'}")
    from ._build_stamp import stale
    try:
        from .coding import _ext
        lines.append(f"compiled range coder: yes ({_ext().__file__})")
    except ImportError as e:   # (not built, or built from other sources than csrc/ holds now)
        lines.append(f"compiled range coder: NO ({e})")
    # the two optional extensions (a build that could not compile them installs without them;
    # a stale one is not used)
    from ._cpu import _module as _cpu_module, switched_off
    try:
        from . import _cpu_kernels
        old = stale(_cpu_kernels, "_cpu_kernels")
    except ImportError:
        old = None
    ck = None if old else _cpu_module()
    if old:
        lines.append(f"compiled CPU kernels: NOT USED ({old})")
    elif ck is None:
        lines.append("compiled CPU kernels: NO (not built: the PyTorch paths run, slower; "
                     "rebuild with a C++17 compiler that has AVX-512 / AMX intrinsics)")
    else:
        isa = [name for name, probe in (("AMX-BF16", "amx_available"),
                                        ("AVX-512/AVX2 latents", "latents_simd_available"))
               if callable(getattr(ck, probe, None)) and getattr(ck, probe)()]
        lines.append(f"compiled CPU kernels: yes ({', '.join(isa) or 'no usable ISA here'}"
                     f"{'; switched off by SLIMKERNELS_CPU_KERNELS=0' if switched_off() else ''})")
    from . import _state
    try:
        from . import _state_key
        old = stale(_state_key, "_state_key")
    except ImportError:
        old = None
    lines.append("model state key: " + (
        "compiled" if _state._STATE_KEY is not None else
        f"Python (the compiled walk is not used: {old})" if old else
        "Python (the optional extension is not built)"))
    from .pretrained import bundled_model_path
    lines.append(f"bundled model: {bundled_model_path() or 'none'}")
    from .codec import native_bf16, resolve_precision
    lines.append(f"CPU threads: {torch.get_num_threads()}, bf16 autocast on CPU: "
                 f"{'yes' if torch.backends.mkldnn.is_available() else 'no'}, native bf16: "
                 f"{'yes' if native_bf16('cpu') else 'no'}")
    lines.append(f"default precision (--precision auto): CPU {resolve_precision('auto', 'cpu')}"
                 + (f", CUDA {resolve_precision('auto', 'cuda')}" if cuda else ""))
    return "\n".join(lines)


def cmd_env(args) -> int:
    """``slimkernels env``: print the environment report; exit code 0."""
    print(env_report())
    return EXIT_OK


# -- compress / decompress / info ---------------------------------------------------------------
def _load(args):
    from .pretrained import load_model
    try:
        return load_model(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def _outputs(inputs: List[str], output: str, ext: str, force: bool) -> List[str]:
    """The output path of each input; CLIError (before any work) for a missing input, an output
    that is an input (also through links), exists without ``force``, is not a regular file
    (a device, a FIFO: ``force`` does not replace those), or lies in a missing folder."""
    if not output:
        raise CLIError("the output path is empty")
    for p in inputs + [output]:
        if p == "-":
            raise CLIError("'-' (standard input / output) is not supported: give file paths "
                           "(./- for a file named '-')")
    for i in inputs:
        if not os.path.exists(i):
            raise CLIError(f"{i} is a symbolic link that leads nowhere (to a missing file, or in "
                           f"a loop)" if os.path.islink(i) else f"{i} does not exist")
        if os.path.isdir(i):
            raise CLIError(f"{i} is a folder, not a file")
        if not os.path.isfile(i):   # (a pipe such as /dev/stdin or <(...), a device)
            raise CLIError(f"{i} is not a regular file (a pipe or a device): an input is read "
                           f"twice (its type is checked before the batch starts); save it to a "
                           f"file first")
    if len(inputs) > 1 or os.path.isdir(output) or output.endswith(os.sep):
        if not os.path.isdir(output):
            raise CLIError(f"{output} is not an existing folder (create it first: with several "
                           f"inputs, or an output ending in '{os.sep}', the output is a folder)"
                           if len(inputs) > 1 or output.endswith(os.sep) else
                           f"{output}: not a folder")
        outs = [os.path.join(output, os.path.splitext(os.path.basename(p))[0] + ext)
                for p in inputs]
    else:
        outs = [output]
    seen = {}
    for src, dst in zip(inputs, outs):
        key = os.path.realpath(dst)
        if key in seen:
            raise CLIError(f"{seen[key]} and {src} would both write {dst}; rename one")
        seen[key] = src
    sources = {os.path.realpath(i): i for i in inputs}
    images = _image_extensions() if ext == ".slim" else set()
    for i, o in zip(inputs, outs):
        same = sources.get(os.path.realpath(o))
        if same is None and os.path.exists(o):
            same = next((s for s in inputs if os.path.samefile(s, o)), None)   # (hard links)
        if same is not None:
            raise CLIError(f"output {o} is the input file {same}")
        # (before the exists check: it advised --force, which then failed with this)
        if os.path.splitext(o)[1].lower() in images:
            raise CLIError(f"{o}: compress writes a .slim file, not an image: name it .slim")
        if os.path.lexists(o) and not force:   # (lexists: a dangling link too)
            raise CLIError(f"{o} exists: not overwriting it (use --force)")
        if os.path.exists(o) and not os.path.isfile(o):
            raise CLIError(f"{o} exists and is not a regular file (a folder, device or FIFO): "
                           f"not replacing it, even with --force")
        folder = os.path.dirname(os.path.abspath(o))
        if not os.path.isdir(folder):
            raise CLIError(_missing_folder(o, folder))
        longest = _name_max(folder)   # (else the rename failed after the work, naming a temp)
        if len(os.fsencode(os.path.basename(o))) > longest:
            raise CLIError(f"cannot write {o}: its name is longer than the {longest} bytes the "
                           f"file system in {folder} allows")
    return outs


def _missing_folder(out: str, folder: str) -> str:
    """Why ``out`` cannot be written in ``folder``, which is not a folder: the first part of it
    that exists but is not a folder (a file), else that the folder does not exist."""
    part = folder
    while not os.path.lexists(part) and os.path.dirname(part) != part:
        part = os.path.dirname(part)
    if os.path.lexists(part) and not os.path.isdir(part):   # (it said the folder does not
        return f"cannot write {out}: {part} is a file, not a folder"   # exist: create it)
    return f"cannot write {out}: the folder {folder} does not exist (create it first)"


def _name_max(folder: str) -> int:
    """The longest file name (bytes) the file system of ``folder`` takes (255 where it does not
    say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _image_extensions() -> set:
    """Lower-case file extensions of images (ours, .gif and every one Pillow registers: .pgm,
    .jfif, .tga, ...): a ``compress`` output named so would put .slim bytes in an image's name
    (with --force over an existing image)."""
    from PIL import Image

    from .io import IMAGE_EXTENSIONS
    ours = set(IMAGE_EXTENSIONS) | {".gif"}
    return (ours | {e.lower() for e in Image.registered_extensions()}) - {".slim"}


def _batch(pairs, one, desc: str, quiet: bool) -> None:
    """``one(src, dst, say)`` for each pair (with the progress bar; ``say(text, file=None)``
    prints a line above the bar, to stdout or ``file``: a plain ``print`` while the bar is drawn
    on stderr left the bar's text at the start of the line on a terminal). All or nothing: when
    one fails (or Ctrl-C, SIGTERM), the outputs this batch created are removed and the files it
    replaced under --force are restored (each is kept as a hidden hard link, or copy, next to
    it until the batch ends) before the error goes on, so that the batch changed nothing and its
    rerun needs no --force. The bookkeeping (a copy made and recorded, the rollback, the copies'
    removal) runs with SIGINT / SIGTERM / SIGHUP deferred."""
    created, replaced = [], []   # replaced: (dst, backup)
    items = _progress(pairs, not quiet, desc)
    # (tqdm.write: clears the bar, prints, redraws it)
    say = _Lines(getattr(items, "write", print))
    dst, existed = None, True
    try:
        for src, dst in items:
            existed = os.path.lexists(dst)
            if existed:
                with _SignalsDeferred():
                    replaced.append((dst, _backup(dst)))
            one(src, dst, say)
            if not existed:
                created.append(dst)
            dst = None
    except BaseException as e:
        # an output written before the failure (e.g. its line could not be printed) is the
        # batch's too; a FileExistsError is another process's file appearing: not ours
        if dst is not None and not existed and os.path.lexists(dst) and \
                not isinstance(e, FileExistsError):
            created.append(dst)
        with _SignalsDeferred(reraise=False):   # (the error goes on, not a signal meanwhile)
            _undo(created, replaced)
        raise
    with _SignalsDeferred():   # (a Ctrl-C now comes after the copies are gone)
        for _, backup in replaced:
            _remove_quietly(backup)


class _SignalsDeferred:
    """SIGINT, SIGTERM and SIGHUP only recorded while the block runs (main thread: elsewhere a
    no-op); on exit the handlers are restored and, with ``reraise``, the first signal recorded
    is raised again (KeyboardInterrupt, or what the restored handler does). Python-level
    handlers, not the thread's signal mask: a signal sent to the process goes to any of its
    threads (torch's among them), and Python runs the handler in the main thread anyway."""

    def __init__(self, reraise: bool = True):
        self.reraise = reraise

    def __enter__(self):
        import threading
        self._old, self._got = {}, []
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM", "SIGHUP"):
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, lambda n, f: self._got.append(n))
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        if self._got and self.reraise and exc[0] is None:
            signal.raise_signal(self._got[0])
        return False


def _backup(path: str) -> str:
    """A hidden copy of ``path`` in its folder (a hard link where the file system has them),
    for :func:`_batch` to restore; CLIError if it cannot be made (nothing was written yet, and
    no partial copy is left)."""
    import shutil
    import tempfile
    folder, name = os.path.split(os.path.abspath(path))
    try:
        fd, backup = tempfile.mkstemp(prefix=f".{name}.", suffix=".backup", dir=folder)
        os.close(fd)
    except OSError as e:
        raise CLIError(f"cannot keep a copy of {path} before replacing it ({e.strerror}): "
                       f"nothing was written") from None
    try:
        os.remove(backup)
        try:
            os.link(path, backup, follow_symlinks=False)
        except OSError:
            shutil.copy2(path, backup, follow_symlinks=False)
    except OSError as e:
        _remove_quietly(backup)
        raise CLIError(f"cannot keep a copy of {path} before replacing it ({e.strerror}): "
                       f"nothing was written") from None
    return backup


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _same_entry(a: str, b: str) -> bool:
    """Whether the names ``a`` and ``b`` are links of one file (links themselves not followed)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _undo(created: List[str], replaced: List[Tuple[str, str]]) -> None:
    """:func:`_batch`'s rollback: remove what it created, put back what it replaced, and say
    so on stderr (naming a file it could not put back, and where its copy is)."""
    for d in created:
        _remove_quietly(d)
    lost, restored = [], 0
    for dst, backup in replaced:
        try:
            if _same_entry(backup, dst):
                os.remove(backup)   # (not replaced yet; rename() between two links does nothing)
            else:
                os.replace(backup, dst)
                restored += 1
        except OSError:
            lost.append(f"{dst} (its earlier content is in {backup})")
    if created or restored:   # (a file not replaced yet, e.g. its input failed to decode: nothing
        parts = []            # to say; "put back 1 file" had been printed for it)
        if created:
            parts.append(f"removed the {len(created)} file(s) it had written "
                         f"({', '.join(created[:3])}{', ...' if len(created) > 3 else ''})")
        if restored:
            parts.append(f"put back the {restored} file(s) it had replaced")
        print(f"slimkernels: the batch stopped: {' and '.join(parts)}", file=sys.stderr)
    for what in lost:
        print(f"slimkernels: could not put back {what}", file=sys.stderr)


def _check_images(paths: List[str]) -> None:
    """CLIError for the first input that is not an image Pillow recognizes, from its header
    alone (cheap), before any output is written: a batch no longer stops half-way on a text
    file among its images (its rerun then needed --force)."""
    from PIL import Image, UnidentifiedImageError

    from .io import open_image
    for p in paths:
        try:
            with warnings.catch_warnings():   # (read_image notes a large image itself)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(p):
                    pass
        except Image.DecompressionBombError:
            try:
                open_image(p)   # (its message: too large to read safely, and what to do)
            except ValueError as e:
                raise CLIError(str(e)) from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            if _is_slim(p):
                raise CLIError(f"{p} is a .slim file, not an image: `slimkernels decompress` "
                               f"turns it back into one") from None
            raise CLIError(f"{p}: not an image file Pillow can read ({e})") from None


def _is_slim(path: str) -> bool:
    """Whether ``path`` starts with the .slim magic bytes."""
    from .container import SlimFormatError, check_magic
    try:
        check_magic(path)
    except (OSError, SlimFormatError):
        return False
    return True


def _check_slim_files(paths: List[str]) -> None:
    """CLIError for the first input that is not a .slim file by its magic bytes
    (:func:`slimkernels.container.check_magic`), before any output is written."""
    from .container import SlimFormatError, check_magic
    for p in paths:
        try:
            check_magic(p)
        except FileNotFoundError:   # (MissingFileError: no strerror)
            raise CLIError(f"{p} does not exist") from None
        except OSError as e:
            raise CLIError(f"{p}: cannot read it ({e.strerror or e})") from None
        except SlimFormatError as e:
            raise CLIError(f"{p}: {e}") from None


def _progress(items, enabled: bool, desc: str):
    if not enabled or len(items) < 2:
        return items
    try:
        from tqdm import tqdm
        # (on a terminal only: in a log file the bar's redraws are lines of '\r' and counts)
        return tqdm(items, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty())
    except ImportError:  # pragma: no cover
        return items


def _pick_width(model, x, args) -> int:
    widths = model.widths  # widest first
    if args.width is not None:
        if args.width not in widths:
            raise CLIError(f"--width {args.width} is not one of the model's widths {widths}")
        return args.width
    if args.quality is not None:
        if not 1 <= args.quality <= len(widths):
            raise CLIError(f"--quality must be 1..{len(widths)} (1 = narrowest, lowest rate)")
        return widths[len(widths) - args.quality]
    return widths[0]


def _set_threads(args) -> None:
    """``--threads``: 0 keeps torch's default; negative, or more than ``MAX_THREADS_PER_CPU``
    per CPU (:func:`too_many_threads`), is an error."""
    import torch

    if args.threads < 0:
        raise CLIError(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if too_many_threads(args.threads):
        raise CLIError(too_many_threads(args.threads))
    if args.threads:
        torch.set_num_threads(args.threads)


def cmd_compress(args) -> int:
    """``slimkernels compress``: images -> ``.slim`` files (``args`` from :func:`build_parser`);
    the exit code (0, or 1 after a one-line error; a batch's outputs are removed on failure)."""
    from .io import atomic_write_bytes, read_image

    _set_threads(args)
    if args.target_bpp is not None and not (math.isfinite(args.target_bpp) and args.target_bpp > 0):
        raise CLIError(f"--target-bpp must be a finite number > 0, got {args.target_bpp}")
    if not 1 <= args.streams <= 255:
        raise CLIError(f"--streams must be 1..255 (coder substreams), got {args.streams}")
    outs = _outputs(args.inputs, args.output, ".slim", args.force)
    _check_images(args.inputs)
    model = _load(args)
    seen = []

    def one(src, dst, say):
        try:
            x, note = read_image(src)
        except (ValueError, FileNotFoundError) as e:
            raise CLIError(str(e)) from None
        if note:                               # warnings go to stderr even with -q
            say(f"{src}: {note}", file=sys.stderr)
        t0 = time.perf_counter()
        fits = True
        if args.target_bpp is not None:   # the file measured against the target is the one written
            from .ratecontrol import compress_to_target_bpp
            width, data, fits = compress_to_target_bpp(
                model, x.to(args.device), args.target_bpp, precision=args.precision,
                streams=args.streams)
        else:
            width = _pick_width(model, x, args)
            data = model.compress(x.to(args.device), width, precision=args.precision,
                                  streams=args.streams)
        dt = time.perf_counter() - t0
        atomic_write_bytes(dst, data, overwrite=args.force)
        H, W = x.shape[-2:]
        bpp = 8 * len(data) / (H * W)
        if not args.quiet:
            say(f"{src} -> {dst}: width {width}, {len(data)} bytes, "
                f"{bpp:.4f} bpp, {dt * 1e3:.1f} ms{_first_call(seen)}")
        if not fits:
            say(f"{src}: note: no width reaches --target-bpp {args.target_bpp:g}; wrote the "
                f"smallest file, width {width} ({bpp:.4f} bpp)", file=sys.stderr)
    _batch(list(zip(args.inputs, outs)), one, "compress", args.quiet)
    return EXIT_OK


def _first_call(seen: list) -> str:
    """The note after the first file's time (its call prepares the weights' caches and layouts:
    several times a later call's time; the README's numbers are of later calls); empty after."""
    if seen:
        return ""
    seen.append(True)
    return " (first call: includes preparing the weights)"


#: The largest side a WebP image holds (libwebp's limit: 16383 pixels).
WEBP_MAX_SIDE = 16383


def cmd_decompress(args) -> int:
    """``slimkernels decompress``: ``.slim`` files -> images (``args`` from :func:`build_parser`);
    the exit code (0, or 1 after a one-line error)."""
    from .codec import DECODE_MAX_PIXELS
    from .container import (ImageTooLargeError, ModelMismatchError, SlimFormatError, read_bytes,
                            unpack)
    from .io import atomic_write_bytes, image_to_png_bytes

    limit = DECODE_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    if limit < 0:
        raise CLIError(f"--max-pixels must be >= 0 (0: no limit), got {limit}")
    _set_threads(args)
    outs = _outputs(args.inputs, args.output, ".png", args.force)
    _check_slim_files(args.inputs)
    model = _load(args)
    seen = []

    def one(src, dst, say):
        fmt = {".png": "PNG", ".bmp": "BMP", ".ppm": "PPM", ".tif": "TIFF", ".tiff": "TIFF",
               ".webp": "WEBP"}.get(os.path.splitext(dst)[1].lower())
        if fmt is None:
            raise CLIError(f"{dst}: choose a lossless output format (.png, .bmp, .ppm, .tif, .webp)")
        try:
            data = read_bytes(src)
            if fmt == "WEBP":   # (its side limit, from the header: before the decoding)
                f = unpack(data)
                if max(f.height, f.img_width) > WEBP_MAX_SIDE:
                    raise CLIError(f"{src}: its image is {f.img_width}x{f.height}, and WebP holds "
                                   f"at most {WEBP_MAX_SIDE} pixels a side: write {dst} as .png")
            t0 = time.perf_counter()
            x = model.decompress(data, precision=args.precision, max_pixels=limit or None)
            dt = time.perf_counter() - t0
        except FileNotFoundError:
            raise CLIError(f"{src} does not exist") from None
        except ModelMismatchError as e:
            raise CLIError(f"{src}: {e} (--model MODEL picks the model file)") from None
        except SlimFormatError as e:
            raise CLIError(f"{src}: {e}") from None
        except ImageTooLargeError as e:
            raise CLIError(f"{src}: {e.what}: --max-pixels N raises the limit (0: none)") \
                from None
        atomic_write_bytes(dst, image_to_png_bytes(x, fmt), overwrite=args.force)
        if not args.quiet:
            say(f"{src} -> {dst}: {x.shape[-1]}x{x.shape[-2]}, {dt * 1e3:.1f} ms"
                f"{_first_call(seen)}")
    _batch(list(zip(args.inputs, outs)), one, "decompress", args.quiet)
    return EXIT_OK


def cmd_info(args) -> int:
    """``slimkernels info``: print each ``.slim`` file's header and metadata; the exit code (1
    when a file could not be read: each is named, and the files after it are still shown)."""
    from . import coding
    from .container import SlimFormatError, read_bytes, unpack

    failed = False
    say = _Lines()
    for path in args.files:
        if path == "-":   # (as compress / decompress; it was "- does not exist")
            _err("'-' (standard input) is not supported: give file paths (/dev/stdin for a "
                 "pipe, ./- for a file named '-')")
            failed = True
            continue
        try:
            data = read_bytes(path)   # (once: a pipe reads as it is, and its size is this)
            f = unpack(data)
        except (OSError, SlimFormatError) as e:
            # (any OSError: a folder, a path through a file, no permission, a name too long;
            # only FileNotFoundError was caught, and the others ended the command there)
            _err(f"{path} does not exist" if isinstance(e, FileNotFoundError) else
                 f"{path}: cannot read it ({e.strerror or e})" if isinstance(e, OSError) else
                 f"{path}: {e}")
            failed = True
            continue
        size = len(data)
        try:   # (the payload's own count: the coder may write fewer than the header's request)
            held = coding.stream_count(f.payload)
        except ValueError:
            held = None
        streams = (f"{f.streams} substream(s)" if held == f.streams else
                   f"{held} substream(s) (the header asked {f.streams})" if held is not None else
                   f"{f.streams} substream(s) asked (the payload's header is unreadable)")
        say(f"{path}: .slim format v{f.version}, model {f.model_id.hex()}, width {f.width}, "
            f"image {f.img_width}x{f.height}, {streams}, payload "
            f"{len(f.payload)} bytes, file {size} bytes, {8 * size / (f.height * f.img_width):.4f} bpp")
        for k, v in f.metadata.items():   # (repr: a key's control characters stay visible)
            say(f"  {k if k.isprintable() else repr(k)}: {v[:80]!r}")
    return EXIT_ERROR if failed else EXIT_OK


def cmd_eval(args) -> int:
    """``slimkernels eval``: :func:`slimkernels.evaluation.cli.run_eval`; its exit code."""
    from .evaluation.cli import run_eval
    return run_eval(args)


def cmd_train(args) -> int:
    """``slimkernels train``: the trainer on ``args`` (:mod:`slimkernels.training.cli`); its exit
    code."""
    from .training.cli import config_from_args, run
    return run(config_from_args(args))   # (torchrun: in a process group)


# -- parser ------------------------------------------------------------------------------------
def _command(argv: List[str]) -> Optional[str]:
    """The subcommand ``argv`` names: its first word that is not an option (the top level's
    options, ``-h`` and ``--version``, take no value), else None."""
    return next((w for w in argv if not w.startswith("-")), None)


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The ``slimkernels`` argument parser: one subcommand per ``cmd_*`` function. Given the
    arguments it will parse (``argv``; None: all of it), it leaves out the ``train`` and
    ``eval`` options unless they name that command: they are built from the trainer's config
    and the evaluation's defaults, whose modules import torch (so ``--help``, ``info`` and a
    mistyped command line answer in ~0.1 s, without it)."""
    full = {"eval", "train"} if argv is None else {_command(argv)}   # (commands built whole)
    p = argparse.ArgumentParser(prog="slimkernels",
                                description="Slimmable neural image compression (SlimCAE).")
    p.add_argument("--version", action="version", version=f"slimkernels {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    s = sub.add_parser("env", help="print versions, backend, GPU and coder status")
    s.set_defaults(func=cmd_env)

    def common(s):
        s.add_argument("--model", default=None, help="model file (default: the bundled model)")
        s.add_argument("--device", default="cpu", type=cli_device,
                       help="device of the transforms: cpu, cuda, cuda:N (default: cpu)")
        s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                       help="transform precision: auto (default: bf16 autocast where the device "
                            "has native bf16, e.g. AMX / AVX512-BF16 CPUs, else fp32), fp32, bf16")
        s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
        s.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
        s.add_argument("-q", "--quiet", action="store_true", help="no progress or per-file lines (warnings still go to stderr)")

    s = sub.add_parser("compress", help="compress images to .slim files")
    s.add_argument("inputs", nargs="+", metavar="IN", help="input images (PNG, JPEG, ...)")
    s.add_argument("output", metavar="OUT", nargs="?",
                   help="output file, or folder for several inputs (or give it as -o OUT)")
    s.add_argument("-o", "--output", dest="output_opt", metavar="OUT", default=None,
                   help="the output, as an option: then every positional argument is an input")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--width", type=int, help="sub-network width (default: the widest)")
    g.add_argument("--quality", type=int, help="1 (narrowest, lowest rate) .. number of widths")
    g.add_argument("--target-bpp", type=float, help="pick the widest width at or under this rate")
    s.add_argument("--streams", type=int, default=1,
                   help="coder substreams, decoded in parallel (default 1: the same bytes "
                        "whatever the thread count; the Python API's default, streams=None, "
                        "takes one per 65536 latent symbols up to the thread count, so its bytes "
                        "can differ)")
    common(s)
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("decompress", help="decompress .slim files to images")
    s.add_argument("inputs", nargs="+", metavar="IN", help=".slim files")
    s.add_argument("output", metavar="OUT", nargs="?",
                   help="output image (.png...), or folder (or give it as -o OUT)")
    s.add_argument("-o", "--output", dest="output_opt", metavar="OUT", default=None,
                   help="the output, as an option: then every positional argument is an input")
    s.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse a file whose image has more than N pixels, before decoding it "
                        "(default: ~179 million, Pillow's limit for reading an image; 0: no "
                        "limit): a file of a few MB can ask for a 16384x16384 image")
    common(s)
    s.set_defaults(func=cmd_decompress)

    s = sub.add_parser("info", help="show the header of .slim files")
    s.add_argument("files", nargs="+", metavar="FILE", help=".slim files")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("eval", help="evaluate on a folder of images (RD table, JSON, plot)")
    if "eval" in full:
        try:
            from .evaluation.cli import add_eval_arguments
            add_eval_arguments(s)
        except ImportError:  # pragma: no cover - evaluation extras missing
            s.add_argument("dir")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("train", help="train a SlimCAE (python/train.py in the source "
                                     "repository is the same program)")
    if "train" in full:
        from .training.cli import build_parser as train_parser
        train_parser(s)
    s.set_defaults(func=cmd_train)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``slimkernels`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    paths_too = hasattr(args, "output_opt") and not any(e.startswith("-") for e in extra)
    if extra and not paths_too:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")   # (exits 2)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if hasattr(args, "output_opt"):   # compress / decompress: IN... OUT, or IN... -o OUT
        # argparse fills IN / OUT from the first run of positional words only: the words after
        # an option (`a.png --width 8 z.slim`) come back in `extra`
        paths = args.inputs + ([args.output] if args.output is not None else []) + extra
        if args.output_opt is not None:
            args.inputs, args.output = paths, args.output_opt
        elif len(paths) < 2:
            _err(f"{args.cmd}: give the output after the input (slimkernels {args.cmd} IN OUT, "
                 f"or -o OUT)")
            return EXIT_USAGE
        else:
            args.inputs, args.output = paths[:-1], paths[-1]
    if args.cmd != "info":   # (info reads headers: no torch, no tensors)
        from . import allocator
        allocator.tune_from_env()   # page-fault-free activations at narrow widths (allocator.py)
    old = _catch_termination()
    try:
        return args.func(args)
    except CLIError as e:
        _err(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:   # (128 + SIGINT, as a shell reports it; train does the same)
        _err("interrupted")
        return 128 + signal.SIGINT
    except _Terminated as e:   # (a batch's outputs and any temporary file were removed on the way)
        _err(f"stopped by signal {e.signum}")
        return 128 + e.signum
    except (ValueError, FileExistsError) as e:   # (their messages say what was wrong)
        _err(str(e))
        return EXIT_ERROR
    except ImportError as e:   # (e.g. the coder not built, or a stale build: the fix named)
        _err(str(e))
        return EXIT_ERROR
    except (RuntimeError, OSError, FloatingPointError, MemoryError) as e:
        if type(e).__name__ == "OutOfMemoryError":   # (torch's, CUDA: which GPU, how much)
            _err(f"out of GPU memory (the image or the batch is too large for the GPU: try "
                 f"--device cpu): {str(e).splitlines()[0] if str(e) else ''}")
        elif _out_of_memory(e):
            _err("out of memory (the image or the batch is too large for this machine's memory)")
        else:
            _err(f"{type(e).__name__}: {e}")
        return EXIT_ERROR
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is a host allocation failure: Python's MemoryError or torch's CPU
    allocator's RuntimeError ("[enforce fail at alloc_cpu.cpp] ... DefaultCPUAllocator: can't
    allocate memory", "not enough memory" on Windows). (torch's CUDA OutOfMemoryError is told
    apart in :func:`main`: it names the GPU.)"""
    if isinstance(e, MemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator" in msg and (
        "can't allocate memory" in msg or "not enough memory" in msg)


class _Terminated(BaseException):
    """SIGTERM / SIGHUP during a command, raised where the program is, so that the cleanups a
    Ctrl-C runs (a temporary output file, a batch's outputs) run too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _catch_termination() -> dict:
    """Turn SIGTERM and SIGHUP into :class:`_Terminated` (main thread only); returns the
    handlers to restore. (Their default ended the process at once: a half-written hidden
    temporary file stayed next to the output.)"""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        raise _Terminated(signum)
    old = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            old[sig] = signal.signal(sig, handler)
    return old


if __name__ == "__main__":
    sys.exit(main())
