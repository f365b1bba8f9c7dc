"""The bad-input catalogue: every mistake in tests/catalogue/cases/ gets one clear message, never a traceback.

Each case is a folder: the broken spec (and data files), plus `case.yaml` with the command line, the exit
code and message fragments: where (file:line: key), what was expected, and the fix. The command runs
in-process through `nas.cli.main` inside a copy of the folder, so paths in messages are the user's own.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from nas.cli import main

CASES = Path(__file__).parent / "catalogue" / "cases"
ALL = sorted(p.name for p in CASES.iterdir() if (p / "case.yaml").exists())


def test_the_catalogue_is_large_and_the_readme_counts_it() -> None:
    assert len(ALL) >= 40
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())  # line breaks as spaces
    said = re.search(r"`tests/catalogue/cases/` holds (\d+) such mistakes", readme)
    assert said, "README.md no longer says how many mistakes the catalogue holds"
    assert int(said.group(1)) == len(ALL), f"README.md says {said.group(1)} cases, tests/catalogue/cases/ holds {len(ALL)}"


@pytest.mark.parametrize("name", ALL)
def test_bad_input_gets_a_clear_message(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    case = yaml.safe_load((CASES / name / "case.yaml").read_text())
    work = tmp_path / name
    shutil.copytree(CASES / name, work)
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as exit_info:
        main(case["run"].split())
    out, err = capsys.readouterr()
    text = out + err
    assert exit_info.value.code == case["exit"], text
    assert "Traceback" not in text and "internal error" not in text, text
    assert err.startswith("error: "), text
    for fragment in case["expect"]:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
