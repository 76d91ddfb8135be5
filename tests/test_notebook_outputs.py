"""The committed tutorial notebooks carry clean outputs of a full run: every code cell executed,
no error, no stderr stream, no warning and no path of the machine that ran them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
#: Text that must not appear in an output: warnings and absolute paths of a machine.
FORBIDDEN = ("Warning", "/work/", "/root/", "/home/", "/tmp/")


def output_texts(output: dict) -> list[str]:
    """The text of one output: a stream's text, an error's traceback, a result's text/* data."""
    def text(value) -> str:
        return "".join(value) if isinstance(value, list) else str(value)

    if output.get("output_type") == "stream":
        return [text(output.get("text", ""))]
    if output.get("output_type") == "error":
        return [text(output.get("traceback", ""))]
    data = output.get("data", {})
    return [text(v) for k, v in data.items() if k.startswith("text/") or k == "application/json"]


def code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_code_cell_was_executed_in_order(path):
    counts = [c.get("execution_count") for c in code_cells(path) if "".join(c["source"]).strip()]
    assert None not in counts, f"{path.name}: code cells without an execution count (not executed)"
    assert counts == sorted(set(counts)), f"{path.name}: cells run out of order"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_outputs_carry_no_errors_warnings_or_machine_paths(path):
    problems = []
    for i, cell in enumerate(code_cells(path)):
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "error":
                problems.append(f"cell {i}: error {output.get('ename')}")
            if kind == "stream" and output.get("name") == "stderr":
                problems.append(f"cell {i}: stderr stream {''.join(output.get('text', ''))[:120]!r}")
            for text in output_texts(output):
                problems += [f"cell {i}: {word!r} in {text[:120]!r}" for word in FORBIDDEN if word in text]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_the_checks_catch_a_warning_and_a_path():
    stream = {"output_type": "stream", "name": "stdout", "text": ["/home/me/x.py:3: UserWarning: careful\n"]}
    texts = output_texts(stream)
    assert [w for w in FORBIDDEN if any(w in t for t in texts)] == ["Warning", "/home/"]
    result = {"output_type": "execute_result", "data": {"text/plain": ["'/tmp/run'"], "image/png": "iVBOR"}}
    assert output_texts(result) == ["'/tmp/run'"]
