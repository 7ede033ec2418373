"""Data: sessions in, in one canonical schema, and the text form the task is written and read in.

Takes the shared AICL/BundleRec files of a domain or a user's exchange tables (items, bundles); gives one row per
session with its items, titles, categories and ground-truth bundles (`sessions`), refusing bad files with the file,
session and row at fault (`checks`). `prompts` writes a session and its bundles as AICL's text, and `parsing` reads
bundles back from any LLM answer: teacher, knowledge and student stages share both.
"""
