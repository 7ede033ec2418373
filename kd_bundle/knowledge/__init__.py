"""Knowledge: training sessions in, the three knowledge formats out, and the pools that RQ2 samples from them.

Takes the training split (and the teacher, for rules and thoughts); gives Parquet-ready frames of frequent category
patterns (`patterns`, Apriori), rules from AICL's self-reflection conversation (`reflection`, `rules`) and the
teacher's reasoning paths (`thoughts`); `sampling` and `pools` pick and combine which training sessions feed a pool.
`distill` is `python -m kd_bundle distill`, the same extraction without Prefect.
"""
