"""What every package shares and imports; core imports none of them.

errors (typed errors with their HTTP status), names (the pattern of collection, adapter and
profile names), prompt (the context block: how retrieved chunks are laid into a prompt, for
serving and for training alike), models and adapters (the model and adapter folders: import,
checks, fingerprints), packing (an adapter's files as one blob for the store), console (how a
command line fails), cpu (what the CPU has for bf16).
"""
