"""Docs smoke tests: the API reference builds (offline, pdoc) and the public API is documented."""
import importlib
import importlib.util
import inspect
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC = ["slimkernels.ops", "slimkernels.nn", "slimkernels.coding", "slimkernels.container",
          "slimkernels.models", "slimkernels.codec", "slimkernels.io", "slimkernels.ratecontrol",
          "slimkernels.pretrained", "slimkernels.training", "slimkernels.training.data",
          "slimkernels.evaluation", "slimkernels.backend", "slimkernels.allocator",
          "slimkernels.cpu_replay", "slimkernels.cuda_graphs"]


def _load_build_api():
    spec = importlib.util.spec_from_file_location("build_api", os.path.join(ROOT, "docs",
                                                                            "build_api.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def public_objects(modname):
    """(qualified name, object) of the module's public classes and functions: the names in
    ``__all__``, or (without ``__all__``) the public ones the module defines itself."""
    m = importlib.import_module(modname)
    if hasattr(m, "__all__"):
        names = list(m.__all__)
        missing = [n for n in names if not hasattr(m, n)]
        assert not missing, f"{modname}.__all__ names {missing}, which do not exist"
    else:
        names = [n for n, v in vars(m).items() if not n.startswith("_")
                 and getattr(v, "__module__", None) == modname]
    objs = [(f"{modname}.{n}", getattr(m, n)) for n in names]
    return [(q, o) for q, o in objs if inspect.isclass(o) or inspect.isfunction(o)]


@pytest.mark.parametrize("modname", PUBLIC)
def test_public_names_have_docstrings(modname):
    undocumented = []
    objs = public_objects(modname)
    assert objs, f"{modname} exports no classes or functions"
    for qual, obj in objs:
        if not (obj.__doc__ or "").strip():
            undocumented.append(qual)
        if inspect.isclass(obj):
            for name, member in vars(obj).items():
                if name.startswith("_") or not callable(member):
                    continue
                # inherited docstrings count (an nn.Module.forward override, say)
                if not (inspect.getdoc(getattr(obj, name)) or "").strip():
                    undocumented.append(f"{qual}.{name}")
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_module_docstrings():
    for modname in PUBLIC + ["slimkernels"]:
        assert (importlib.import_module(modname).__doc__ or "").strip(), modname


def test_public_modules_listing():
    mods = _load_build_api().public_modules()
    assert mods[0] == "slimkernels"
    for m in ("slimkernels.nn", "slimkernels.ops", "slimkernels.coding", "slimkernels.container",
              "slimkernels.codec", "slimkernels.models"):
        assert m in mods
    assert not [m for m in mods if any(p.startswith("_") for p in m.split("."))]
    assert len(mods) == len(set(mods))


def test_api_reference_builds(tmp_path):
    pytest.importorskip("pdoc", reason="pdoc is in the [docs] extra: pip install pdoc")
    index = _load_build_api().build(tmp_path, PUBLIC)
    assert index.exists()
    pages = {p.relative_to(tmp_path).as_posix(): p for p in tmp_path.rglob("*.html")}
    for mod in PUBLIC:
        assert mod.replace(".", "/") + ".html" in pages, sorted(pages)
    nn = pages["slimkernels/nn.html"].read_text()
    for name in ("SlimConv2d", "SlimConvTranspose2d", "SlimGDN", "SlimGDNPlus",
                 "SlimEntropyBottleneck"):
        assert f'id="{name}"' in nn, name
    # docstring text (shapes) is rendered, not only the names
    assert "C_max" in nn
    codec = pages["slimkernels/codec.html"].read_text()
    assert 'id="SlimCodec.compress"' in codec and "edge replication" in codec


def test_build_api_script_runs(tmp_path):
    pytest.importorskip("pdoc")
    import subprocess
    r = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "build_api.py"), "--out",
                        str(tmp_path), "slimkernels.container"], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    page = (tmp_path / "slimkernels" / "container.html").read_text()
    assert "SlimFormatError" in page


def test_format_md_worked_example_is_what_pack_writes():
    """docs/format.md's hex dump is byte for byte what container.pack produces."""
    import re
    from slimkernels import container
    with open(os.path.join(ROOT, "docs", "format.md")) as fh:
        text = fh.read()
    block = text.split("### Worked example", 1)[1].split("```")[1]
    hexes = "".join(re.match(r"((?:[0-9a-f]{2} )*[0-9a-f]{2})", line.strip()).group(1)
                    for line in block.strip().splitlines())
    f = container.SlimFile(model_id=bytes(range(16)), width=8, height=3, img_width=5, streams=1,
                           payload=b"\x01\x02\x03", metadata={"k": b"xy"})
    assert bytes.fromhex(hexes.replace(" ", "")) == container.pack(f)


def test_format_md_lists_every_reader_error():
    """Every SlimFormatError message in container.py is in the validation table."""
    import re
    with open(os.path.join(ROOT, "slimkernels", "container.py")) as fh:
        src = fh.read()
    with open(os.path.join(ROOT, "docs", "format.md")) as fh:
        doc = fh.read()
    msgs = re.findall(r'SlimFormatError\(\s*f?"([^"{]{12,})', src)
    assert len(msgs) >= 8
    for m in msgs:
        assert m.split("(")[0].strip() in doc, m


def _markdown_pages():
    """Every Markdown page of the checkout (README, docs, model card, benchmark reports), as
    paths relative to the root; build outputs and virtual environments left out."""
    pages = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_build", "build"))
                       and d not in ("node_modules", "__pycache__")]
        pages += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames
                  if f.endswith(".md")]
    return sorted(pages)


def test_markdown_pages_found():
    pages = _markdown_pages()
    for page in ("README.md", os.path.join("docs", "performance.md"),
                 os.path.join("docs", "format.md"),
                 os.path.join("slimkernels", "pretrained", "MODEL_CARD.md")):
        assert page in pages, page


@pytest.mark.parametrize("page", _markdown_pages())
def test_relative_links_resolve(page):
    """Every relative link of every Markdown page names a file or folder that exists (relative
    to the page's own folder, as GitHub resolves it)."""
    import re
    with open(os.path.join(ROOT, page)) as fh:
        text = fh.read()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), target)), \
            f"{page}: the link {target!r} names nothing"


def _results_table(text: str, header: str = "| width | bpp (file) |") -> str:
    """The first Markdown table of ``text`` that starts with ``header`` (default: the Kodak
    results table; ``"| anchor |"``: the BD-rate table against JPEG, WebP and Balle 2017)."""
    i = text.index(header)
    return text[i:text.index("\n\n", i)]


@pytest.mark.parametrize("page", ["README.md", os.path.join("slimkernels", "pretrained",
                                                            "MODEL_CARD.md")])
def test_results_tables_are_the_bundled_models(page):
    """The README and the model card copy the Kodak tables and headline numbers of a milestone by
    hand: they must be those of the results folder their RD plot links, and that folder must be
    the bundled model's evaluation (same model id), so a new milestone cannot leave either page
    stale."""
    import json
    import re
    from slimkernels.pretrained import load_model
    with open(os.path.join(ROOT, page)) as fh:
        text = fh.read()
    folders = set(re.findall(r"docs/results/(kodak-step\d+)/rd\.png", text))
    assert len(folders) == 1, f"{page}: expected one linked RD plot, found {sorted(folders)}"
    assert re.search(r"!\[[^\]]*\]\([^)]*docs/results/kodak-step\d+/rd\.png\)", text), \
        f"{page}: the RD plot is linked but not shown (an ![...](...) image)"
    folder = os.path.join(ROOT, "docs", "results", folders.pop())
    with open(os.path.join(folder, "table.md")) as fh:
        table = fh.read() + "\n\n"
    for header in ("| width | bpp (file) |", "| anchor |"):
        assert _results_table(text, header) == _results_table(table, header), \
            f"{page}: its table starting {header!r} differs from {folder}/table.md"
    with open(os.path.join(folder, "summary.json")) as fh:
        summary = json.load(fh)
    assert summary["slimcae"]["model_id"] == load_model().model_id().hex(), \
        f"{folder} evaluated another model than the bundled slimkernels/pretrained/slimcae.pt"
    # The headline above the table (README: "Results so far"; card: the status paragraph) copies
    # the summary's numbers by hand too.
    start = text.index("## Results so far") if page == "README.md" else text.index("**Status:")
    headline = " ".join(text[start:text.index("| width | bpp (file) |", start)].split())
    jpeg, goals = summary["bd"]["JPEG"], summary["goals"]
    # (the overlap of each BD-rate: PSNR's and MS-SSIM's; the headline gave PSNR's for both)
    overlap = (f"{jpeg['overlap_psnr'] * 100:.0f} % / {jpeg['overlap_ms_ssim'] * 100:.0f} % of")
    for number in (f"{jpeg['bd_rate_pchip']:.1f} %", f"{jpeg['bd_rate_ms_ssim_pchip']:.1f} %",
                   overlap, f"{goals['gap_to_balle2017_db']:.2f} dB"):
        assert number in headline, f"{page}: its headline lacks {number!r} from {folder}/summary.json"
