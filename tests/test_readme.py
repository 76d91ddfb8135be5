"""The README's Python example runs as written (the README must stay honest)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_example():
    assert _python_blocks(), "README has no ```python block"


def test_readme_python_example_runs():
    namespace: dict = {}
    for block in _python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    # The example trains with SVI: it must have produced a finite loss and moved the guide.
    assert torch.isfinite(torch.tensor(namespace["loss"]))
    assert namespace["step"] == 199


def test_make_demo_is_the_first_command_and_its_time_is_stated():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert first_block.splitlines()[0].startswith("make demo")
    stated = re.search(r"`make demo`[^\n]*\n?[^\n]*took \**\d+ (s|min)", text)
    assert stated, "README must state the measured demo time"
