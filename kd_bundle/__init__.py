"""kd-bundle: distil bundle-generation knowledge from a teacher LLM into a small student LLM, and measure it.

One package per stage of the pipeline, and the infrastructure every stage uses at the top:

    data        sessions in (shared data or your exchange tables); the prompt text and the answer parser
    teacher     one cached, retried client over any OpenAI-compatible endpoint; the embedded llama.cpp server
    evaluation  predictions -> metrics and results rows; the non-LLM and teacher reference rows
    knowledge   training sessions -> patterns, rules, thoughts; sampled and pooled knowledge
    student     retrieval, ICL prompts, SFT of an adapter, grammar-constrained generation
    report      results -> the study's tables, analyses and plots

    top level   config, store (content-addressed Parquet artifacts), store_records and store_admin (verify, gc),
                grid, manifest, models (offline weights), process_guard; cli_errors and __main__
                (`python -m kd_bundle ...`) sit above every stage

Imports run down this order only (tests/kd_bundle/test_layers.py checks it):

    report > student > knowledge > evaluation > data, teacher > config, store, store_records, store_admin, grid,
    manifest, models, process_guard

evaluation sits below knowledge because difficulty sampling scores held-out sessions with its metrics and the
pattern baseline; data and teacher are independent of each other. The library never imports Prefect: tasks/ wraps
these functions as cached tasks and flows/ wires them.
"""
