"""ragtune: fine-tune for behaviour (training), retrieve for knowledge (retrieval), serve both.

The folders at the repository's top (core/, serving/, retrieval/, training/, evaluation/) are
this package's subpackages: ragtune/core is a link to core/, and so on. Installed, they are
ragtune.core, ragtune.serving, ragtune.retrieval, ragtune.training and ragtune.evaluation, so
ragtune never takes the generic top-level names `core`, `serving`, `retrieval`, `training` or
`evaluation` from another package in the same environment. Code imports them only by those
full names.
"""
