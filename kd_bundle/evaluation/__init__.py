"""Evaluation: predictions in, scores and results rows out, plus the reference rows every table is judged against.

Takes a predictions frame (`predictions`: one row per session, also the JSON Lines a user's model writes) and the
sessions; gives AICL's and the strict precision, recall and coverage per session and per run (`metrics`, the
`score` CLI) and one tidy results row per grid cell (`results`). The references: the non-LLM baselines
(`baselines`) and the teacher answering the test sessions itself (`teacher_baseline`).
"""
