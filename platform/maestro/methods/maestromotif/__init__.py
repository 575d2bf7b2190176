"""MaestroMotif: skills from a language model's preferences and code, being built (issue 16).

So far this package holds `sandbox.py`, the sandbox that compiles and runs the skill code a
language model writes (initiation and termination functions, the policy over skills). The
method is not declared or registered yet.
"""
