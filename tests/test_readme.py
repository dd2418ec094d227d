"""The README's configuration table lists every setting with its default."""

import re
from pathlib import Path

from flowagg.config import SETTINGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_with_its_default():
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(FLOWAGG_\w+)` \| ([^|]+) \|", section, re.M))
    assert set(rows) == {s.name for s in SETTINGS}
    for setting in SETTINGS:
        shown = "unset" if setting.default is None else f"`{setting.default}`"
        assert rows[setting.name].startswith(shown), (setting.name, rows[setting.name])
