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
        path: output PNG path.
        title: figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .metrics import ms_ssim_db

    r = slim["results"]
    has_ms = r.get("ms-ssim-rgb") is not None
    fig, axes = plt.subplots(1, 2 if has_ms else 1, figsize=(13 if has_ms else 7, 5), squeeze=False)
    panels = [("psnr-rgb", "PSNR (dB, RGB)")] + ([("ms-ssim-rgb", "MS-SSIM (dB)")] if has_ms else [])
    for ax, (key, label) in zip(axes[0], panels):
        def values(curve):
            v = curve["results"].get(key)
            if v is None or None in v:
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
