"""Paired-seed statistics shared by the study and the report: pure functions over arrays of
paired differences, with scipy/statsmodels doing the maths and no I/O.

It sits at the bottom of the layering beside ``trainables`` (it imports neither ``study`` nor
``dashboards``), so the planner, the sequential design and the report compute a power, a
correction or a test one way:

* ``tests``: one decision rule per check type (paired t, sign test, McNemar, restricted-mean
  time, spread randomisation, TOST), vectorised over simulated studies;
* ``power``: seeds needed (paired), or why the number is not defined;
* ``multiplicity``: Holm / Benjamini-Hochberg over a family of tests;
* ``effects``: P(A>B) with its exact interval; ``bestof``: expected best of k seeds;
* ``streams``: random streams keyed by the quantity they resample.
"""
