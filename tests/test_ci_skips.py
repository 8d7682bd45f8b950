"""The real-data and real-model tests skip where their data or package is absent, but fail under `CI=true`, naming
what is missing: CI installs and provides everything, so a skip there would be a silent hole in the suite."""

from __future__ import annotations

import pytest
from conftest import in_ci, require_module, require_package, require_shared_data

FAILED = pytest.fail.Exception
SKIPPED = pytest.skip.Exception


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("TRUE", True), ("", False),
                                                 ("false", False), ("0", False)])  # fmt: skip
def test_ci_flag(value, expected, monkeypatch):
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected
    monkeypatch.delenv("CI")
    assert in_ci() is False


def test_missing_shared_data_skips_locally_fails_in_ci_and_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDER_HF_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CI", "")
    with pytest.raises(SKIPPED, match=r"nowhere/beauty/Beauty\.txt is not present.*SPEEDER_HF_DATA"):
        require_shared_data("beauty/Beauty.txt")
    monkeypatch.setenv("CI", "true")  # CI was told where the data are: their absence is a failure
    with pytest.raises(FAILED, match=r"nowhere/beauty/Beauty\.txt is not present.*CI was told SPEEDER_HF_DATA="):
        require_shared_data("beauty/Beauty.txt")
    (tmp_path / "nowhere" / "beauty").mkdir(parents=True)
    (tmp_path / "nowhere" / "beauty" / "Beauty.txt").write_text("1 1 2\n")
    assert require_shared_data("beauty/Beauty.txt") == tmp_path / "nowhere"  # present: neither
    with pytest.raises(FAILED, match=r"nowhere/sports is not present"):  # the first absent path is named
        require_shared_data("beauty/Beauty.txt", "sports")


def test_default_shared_data_folder_absent_stays_a_skip_in_ci(monkeypatch):
    # Without SPEEDER_HF_DATA the folder beside a clean clone may be absent: a plain skip, listed by -rs.
    monkeypatch.delenv("SPEEDER_HF_DATA", raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(SKIPPED, match=r"no_such_folder is not present"):
        require_shared_data("no_such_folder")


def test_missing_module_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(SKIPPED, match="the module no_such_model_package is not installed"):
        require_module("no_such_model_package")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(FAILED, match=r"no_such_model_package is not installed \(pip install it\).*CI must run"):
        require_module("no_such_model_package", "pip install it")
    assert require_module("json").dumps([1]) == "[1]"


def test_missing_package_is_found_without_importing_it(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(FAILED, match=r"the package no_such_model_package is not installed \(`make install`"):
        require_package("no_such_model_package")
    require_package("speeder_hf")
