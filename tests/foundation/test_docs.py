"""What the README counts stays true."""

from __future__ import annotations

import re
from pathlib import Path

from lab.faults import CATALOGUE

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_counts_the_fault_catalogue() -> None:
    said = re.search(r"`lab/faults.py` lists (\d+) such faults", README.read_text())
    assert said is not None and int(said.group(1)) == len(CATALOGUE), "update the README's fault count"
