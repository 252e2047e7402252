"""Every attribution class of ``captum.attr`` through SiameseSimilarity (the
cases are in ``tests/captum_matrix.py``), and the docs table written from them."""

import warnings

import pytest

import captum_matrix as matrix


def test_every_captum_attribution_class_has_a_case():
    missing = sorted(set(matrix.captum_classes()) - set(matrix.CASES))
    assert not missing, f"add a case to tests/captum_matrix.py for: {missing}"


@pytest.mark.parametrize(
    "name", [name for name, case in matrix.CASES.items() if case.run is not None]
)
def test_case(name):
    with warnings.catch_warnings():
        # Captum warns about hooks on non-linear modules and inputs not requiring grad
        warnings.simplefilter("ignore", UserWarning)
        matrix.CASES[name].run()


def test_the_docs_table_is_written_from_the_cases():
    text = matrix.PAGE.read_text()
    assert matrix.page_with_table(text) == text, (
        "docs/captum-methods.md disagrees with tests/captum_matrix.py: run "
        "`python tests/captum_matrix.py` to rewrite its table"
    )


def test_the_table_has_one_row_per_case_and_says_what_each_checks():
    rows = [r for r in matrix.table().splitlines()[2:]]
    assert len(rows) == len(matrix.CASES)
    for case in matrix.CASES.values():
        row = next(r for r in rows if r.startswith(f"| `{case.name}` |"))
        assert case.checks in row
        assert ("works:" in row) == case.works
