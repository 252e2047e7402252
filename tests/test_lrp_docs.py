"""The code blocks of docs/lrp.md run as written."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "lrp.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_page_has_code():
    assert len(BLOCKS) >= 3


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_code_blocks_run_in_order():
    namespace: dict = {}
    for block in BLOCKS:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["r_pixels"].shape == (5, 2, 3, 32, 32)
