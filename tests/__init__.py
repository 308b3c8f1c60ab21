"""The tests, a package: conftest.py, helpers.py and handmade.py import as tests.*, under `pytest` and
`python -m pytest` alike."""
