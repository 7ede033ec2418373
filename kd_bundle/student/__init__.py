"""Student: sessions and retrieved knowledge in, a (fine-tuned) small LLM's predictions out.

`retrieval` finds each session's nearest training sessions and their knowledge; `icl` builds the prompts, and the SFT
examples from the same blocks; `model` loads the student (by name or folder) and `training` fits a QLoRA/LoRA
adapter; `generate` decodes under `grammar` (only parsable answers over the session's own products) into a
predictions frame; `export` merges a trained adapter into a standalone model folder with a model card, and `serve`
puts that folder behind an OpenAI-compatible server. `python -m kd_bundle.student cfg.json` trains one adapter
outside Prefect.
"""
