"""Audit jobs at scale: streaming, resumable, on this machine or on a Ray cluster.

``spec`` (the job description), ``sources`` (folders, globs, manifests, class trees), ``work`` (the
per-chunk function both engines call), ``records`` (part files and record writers), ``state``
(resume and the ``_DONE`` marker), ``aggregate`` and ``finish`` (the report from aggregates and a
sample), ``engine_local`` and ``engine_ray``, and ``run`` that ties them together.
"""
