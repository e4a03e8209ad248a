"""The serving benchmark (``python -m bench``, ``make bench``) and the server harness it shares
with the test suite. Nothing here ships in the prediction Bento."""
