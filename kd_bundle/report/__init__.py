"""Report: the results table in, the study's markdown tables, analyses and PNG plots out.

`tables` renders the per-RQ tables beside the references; `analysis` (with `bootstrap`'s intervals and paired
verdicts) adds factor impact, knowledge quantity, alignment gains, the knowledge summary and `costs`; `plots` draws
the figures; `document` assembles them and is `python -m kd_bundle report`. `student_card` gathers the model-card facts
of an exported student (a results row with its intervals, training stats, the run manifest) and is
`python -m kd_bundle export`.
"""
