"""Comments, docstrings and the Markdown docs cite only files that exist in this repository.

A citation is a path-like name of a source or doc file (a name ending in .py, .md, .sh, .toml or .ini, with or
without folders) in a comment or docstring of a tracked Python file, or a link target / backticked .py path in a
tracked Markdown file. Names of data files a function reads or writes (`res_track.txt`, `regions.csv`, `zarr.json`)
are not citations. A path resolves from the repository root, from the citing file's folder, from src/ or from the
package (src/napari_sam2: `io/outputs.py`); a bare name (`bench_tracking.py`) must be the name of a tracked file.
Reference material outside the repository (another checkout, notes) cannot be cited: a reader of the repository
cannot open it.
"""

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "model", "tests", "benchmarks", "docs", "ci")
EXTENSIONS = "py|md|sh|toml|ini"
CITATION = re.compile(rf"(?<![\w./-])((?:\.{{1,2}}/)*(?:[\w.-]+/)*[\w-][\w.-]*\.(?:{EXTENSIONS}))(?![\w/-])")
MD_LINK = re.compile(r"\]\(([^)#\s]+)")
MD_CODE_PY = re.compile(r"`((?:[\w.-]+/)*[\w-][\w.-]*\.py)\b")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def comments_and_docstrings(text: str) -> list[tuple[int, str]]:
    """[(line, text)] of every comment and docstring of a Python source."""
    chunks = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                chunks.append((node.body[0].lineno, doc))
    return chunks


def resolves(cited: str, citing: str, files: set[str]) -> bool:
    """Whether `cited` (as written in `citing`) names a tracked file or folder of the repository."""
    cited = cited.strip("`'\"").rstrip(".,;:")
    if "://" in cited or cited.startswith("/") or re.fullmatch(r"[A-Z][A-Z_]*", cited.split("/")[0]):
        return True  # a URL, an absolute example path, or a placeholder folder (OUT_DIR/gpu_check.md): not a citation
    if "/" not in cited.lstrip("./"):
        return any(Path(f).name == cited for f in files)
    folders = {str(p) for f in files for p in Path(f).parents}
    for base in (ROOT, (ROOT / citing).parent, ROOT / "src", ROOT / "src" / "napari_sam2"):
        target = (base / cited).resolve()
        if target.is_relative_to(ROOT) and str(target.relative_to(ROOT)) in files | folders:
            return True
    return False


def dead_citations() -> list[str]:
    files = tracked_files()
    tracked = set(files)
    dead = []
    for f in files:
        if f.endswith(".py") and f.split("/")[0] in SCANNED:
            for line, chunk in comments_and_docstrings((ROOT / f).read_text(encoding="utf-8")):
                dead += [f"{f}:{line}: {m}" for m in CITATION.findall(chunk) if not resolves(m, f, tracked)]
        elif f.endswith(".md"):
            for line, text in enumerate((ROOT / f).read_text(encoding="utf-8").splitlines(), 1):
                cited = MD_LINK.findall(text) + MD_CODE_PY.findall(text)
                dead += [f"{f}:{line}: {m}" for m in cited if not resolves(m, f, tracked)]
    return dead


def test_every_cited_file_exists():
    dead = dead_citations()
    assert not dead, "comments/docs cite files that are not in the repository:\n" + "\n".join(dead)


def test_the_scan_finds_a_dead_citation(tmp_path):
    """The scanner itself: a comment and a docstring citing missing files are found, existing ones are not."""
    source = '"""See docs/NOT_THERE.md and src/napari_sam2/session.py."""\n# from ../shared/notes.py; io/outputs.py\n'
    chunks = comments_and_docstrings(source)
    files = {"src/napari_sam2/session.py", "src/napari_sam2/io/outputs.py"}
    found = [m for _, c in chunks for m in CITATION.findall(c)]
    assert sorted(found) == sorted(
        ["docs/NOT_THERE.md", "src/napari_sam2/session.py", "../shared/notes.py", "io/outputs.py"]
    )
    dead = [m for m in found if not resolves(m, "tests/test_x.py", files)]
    assert sorted(dead) == ["../shared/notes.py", "docs/NOT_THERE.md"]
    assert CITATION.findall("# writes res_track.txt and regions.csv, reads zarr.json") == []
    assert resolves("OUT_DIR/gpu_check.md", "benchmarks/gpu_check.py", files)  # a folder the user chooses
    assert resolves("session.py", "tests/test_x.py", files) and not resolves("sessions.py", "tests/test_x.py", files)
