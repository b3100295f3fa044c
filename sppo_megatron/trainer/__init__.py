"""The SPPO training loop and what it drives (see loop.py)."""

#: the program whose messages the trainer prints (`sppo-train: ...`)
PROG = "sppo-train"
