"""Rate-distortion plots (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

from typing import Dict, Optional

_STYLES = {"JPEG": dict(color="tab:gray", marker="s", ls="--"),
           "WebP": dict(color="tab:green", marker="^", ls="--"),
           "Balle2017": dict(color="tab:orange", marker="x", ls=":")}


def rd_plot(slim: Dict, references: Dict[str, Dict], path: str,
            title: Optional[str] = None) -> str:
    """Write an RD plot PNG: PSNR vs bpp (and MS-SSIM dB vs bpp when measured).

    Args:
        slim: :func:`slimkernels.evaluation.kodak.evaluate` output (CompressAI layout with
            ``results["width"]``); each point is labelled with its width.
        references: ``{name: CompressAI-layout curve}`` (JPEG, WebP, Balle2017...).
        path: output PNG path (or a binary file object: the PNG is written to it).
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: a curve lacks its ``results`` (``slim``: ``width``, ``bpp`` and
            ``psnr-rgb`` of one length; a reference: ``bpp`` and ``psnr-rgb``), or ``path``'s
            extension is not a format matplotlib writes.
        FileNotFoundError: ``path``'s folder does not exist.
    """
    import errno
    import os

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureCanvasBase

    from .metrics import ms_ssim_db

    # (checked first: a results dict without "width" was KeyError 'width', a missing folder or
    # an unknown extension matplotlib's errors after the plot was drawn)
    _check_curve(slim, "slim", ("width", "bpp", "psnr-rgb"))
    for name, ref in references.items():
        _check_curve(ref, f"references[{name!r}]", ("bpp", "psnr-rgb"))
    named = isinstance(path, (str, os.PathLike))   # (else a file object, as savefig takes)
    folder = os.path.dirname(os.path.abspath(path)) if named else None
    if named and not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: the folder {folder} does "
                                              f"not exist")
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".") if named else ""
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext and ext not in formats:
        raise ValueError(f"cannot write {path}: .{ext} is not an image format matplotlib writes "
                         f"(one of {', '.join(sorted(formats))})")
    from .kodak import none_as_nan
    slim = none_as_nan(slim)   # (null read back from a results file: a TypeError before)
    references = {name: none_as_nan(ref) for name, ref in references.items()}
    r = slim["results"]
    has_ms = r.get("ms-ssim-rgb") is not None
    fig, axes = plt.subplots(1, 2 if has_ms else 1, figsize=(13 if has_ms else 7, 5), squeeze=False)
    panels = [("psnr-rgb", "PSNR (dB, RGB)")] + ([("ms-ssim-rgb", "MS-SSIM (dB)")] if has_ms else [])
    for ax, (key, label) in zip(axes[0], panels):
        def values(curve):
            v = curve["results"].get(key)
            if v is None:   # (none_as_nan made a null value NaN: drawn as a gap)
                return None
            return [ms_ssim_db(t) for t in v] if key == "ms-ssim-rgb" else list(v)

        pts = []
        for name, ref in references.items():
            v = values(ref)
            if v is None:
                continue
            pts += list(zip(ref["results"]["bpp"], v))
            style = _STYLES.get(name, dict(marker=".", ls="--"))
            ax.plot(ref["results"]["bpp"], v, label=ref.get("name", name), **style)
        order = sorted(range(len(r["width"])), key=lambda i: r["bpp"][i])
        xs = [r["bpp"][i] for i in order]
        ys = [values(slim)[i] for i in order]
        pts += list(zip(xs, ys))
        ax.plot(xs, ys, color="tab:blue", marker="o", lw=2, label="SlimCAE (measured)")
        for i in order:
            ax.annotate(f"w{r['width'][i]}", (r["bpp"][i], values(slim)[i]),
                        textcoords="offset points", xytext=(4, -12), fontsize=8, color="tab:blue")
        ax.set_xlabel("bits per pixel (file size)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        xmax = max(xs + [1.0]) * 1.08  # every SlimCAE point; references beyond are cut off
        ax.set_xlim(0, xmax)
        seen = [y for x, y in pts if x <= xmax and y == y and abs(y) != float("inf")]
        if seen:
            pad = 0.05 * (max(seen) - min(seen) or 1.0)
            ax.set_ylim(min(seen) - pad, max(seen) + pad)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _check_curve(curve, name: str, keys) -> None:
    """ValueError unless ``curve["results"]`` holds lists of one length under ``keys``."""
    r = curve.get("results") if isinstance(curve, dict) else None
    if not isinstance(r, dict):
        raise ValueError(f"rd_plot: {name} must be a dict with a 'results' dict (the CompressAI "
                         f"layout of kodak.evaluate), got {type(curve).__name__}"
                         + ("" if not isinstance(curve, dict) else f" keys {sorted(curve)}"))
    missing = [k for k in keys if not isinstance(r.get(k), (list, tuple))]
    if missing:
        raise ValueError(f"rd_plot: {name}['results'] has no list {missing[0]!r} (it has "
                         f"{sorted(r)})" + (": pass kodak.evaluate's output" if name == "slim"
                                             else ""))
    if len({len(r[k]) for k in keys}) != 1:
        raise ValueError(f"rd_plot: {name}['results'] " + ", ".join(
            f"{k!r} has {len(r[k])}" for k in keys) + " values: they must have one length")
