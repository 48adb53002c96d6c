"""BPF objects the lab attaches to break a path (compiled on demand with Debian's clang)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = Path(__file__).resolve().parent


def compiled(name: str) -> Path:
    """lab/bpf/<name>.c compiled for the BPF target, cached by its source's hash."""
    source = SOURCES / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"netdiag-bpf-{name}-{digest}.o"
    if out.exists():
        return out
    clang = shutil.which("clang")
    if clang is None:
        raise RuntimeError("clang is not installed (setup.sh installs it): cannot build the BPF object " + name)
    tmp = out.with_suffix(".tmp")
    subprocess.run([clang, "-O2", "-target", "bpf", "-c", str(source), "-o", str(tmp)], check=True,
                   capture_output=True, timeout=60)
    tmp.replace(out)
    return out
