"""The docs list what the code has: every hook of PositionalScheme (docs/positional_schemes.md, its marked
section) and every column of the result rows (results/README.md)."""

import re

from conftest import ROOT

from lenx.pos.base import PositionalScheme
from lenx.results import COLUMNS, PASSKEY_COLUMNS, POSITION_COLUMNS, PROBE_COLUMNS, PROVENANCE
from lenx.tasks import TASK_COLUMNS

# keys rows carry beyond their table's CSV columns (written after them): lenx.extrapolation.length_results,
# lenx.tasks.probe.task_accuracy
EXTRA_KEYS = ["ci_warning", "units_nll", "units_tokens", "units_run", "error", "nll_ci_low", "nll_ci_high", "units"]


def test_the_hooks_section_lists_every_method_and_property_of_the_base_class():
    text = (ROOT / "docs" / "positional_schemes.md").read_text()
    section = text[text.index("<!-- BEGIN base-class hooks"):text.index("<!-- END base-class hooks -->")]
    listed = set(re.findall(r"`([a-z_]+)[(`]", section))
    has = {n for n in vars(PositionalScheme) if not n.startswith("__")}
    assert listed == has, f"only in the docs: {sorted(listed - has)}; only in the class: {sorted(has - listed)}"


def test_results_readme_documents_every_column():
    text = (ROOT / "results" / "README.md").read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", text))
    columns = {*COLUMNS, *POSITION_COLUMNS, *PROBE_COLUMNS, *PASSKEY_COLUMNS, *TASK_COLUMNS, *PROVENANCE,
               *EXTRA_KEYS}
    assert columns <= documented, f"columns missing from results/README.md: {sorted(columns - documented)}"
