"""The generated config key table in docs/config.md matches the schema."""
from pathlib import Path

from libs.config.loader import describe_schema

ROOT = Path(__file__).resolve().parents[2]


def test_config_table_is_current():
    text = (ROOT / "docs" / "config.md").read_text()
    assert describe_schema().strip() in text, (
        "docs/config.md is stale: regenerate it with describe_schema() (see its header)")


def test_readme_names_the_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
