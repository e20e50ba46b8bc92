"""Paired-seed statistics shared by the study and the report: pure functions over arrays of
paired differences, with scipy/statsmodels doing the maths and no I/O.

It sits at the bottom of the layering beside ``trainables`` (it imports neither ``study`` nor
``dashboards``), so the planner, the sequential design and the report compute a power, a
correction or a test one way.
"""
