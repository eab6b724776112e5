"""The stages: one module per rules file (``workflow/rules/X.smk`` ->
``stages/X.py``), one function per rule, named like the rule, with the
signature ``rule(inp: dict, out: dict, params: dict)``.

A stage reads the rule's inputs and params, calls the algorithms (which
take models, tensors and tables) and writes the rule's outputs. Stage
functions import the algorithm modules inside their bodies: the code
fingerprint of a rule (:mod:`unlearnflow.provenance`) then holds what its
own function imports, not what its neighbours do, and a job imports only
what it runs (no torch for a table). Keep this package's ``__init__`` free
of imports: it is part of every stage's fingerprint.
"""
