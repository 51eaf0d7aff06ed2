"""ragtune: fine-tune for behaviour (training), retrieve for knowledge (retrieval), serve both.

The code lives in this package's subpackages: ragtune.core (shared by all), ragtune.retrieval,
ragtune.training, ragtune.serving and ragtune.evaluation, imported only by those full names.
Installed, ragtune takes one top-level name, so it never clashes with another package called
`core`, `serving`, `retrieval` or `training` in the same environment (tests/test_coexistence.py).
The repository's top-level core/, serving/, retrieval/, training/ and evaluation/ are links to
these folders, as the design card lays the project out.
"""
