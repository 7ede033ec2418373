"""A tiny random Llama with a locally trained BPE tokenizer and a chat template (notes/models.md (c)): no download."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kd_bundle.data.prompts import BUNDLE_DEFINITION, DETECT_INSTRUCTION, DETECT_WITH_KNOWLEDGE, format_bundles

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_sessions() -> pl.DataFrame:
    """Eight sessions in SESSION_COLUMNS: 6 train, 2 test, two themes (phones, kitchen)."""
    phone = ["phone case black", "screen protector glass", "usb charger cable", "wireless earbuds", "phone stand"]
    kitchen = ["chef knife steel", "cutting board bamboo", "kitchen scale digital", "mixing bowl set", "oven mitts"]
    rows = []
    for sid in range(1, 9):
        titles = (phone if sid % 2 else kitchen)[: 3 + sid % 3]
        items = [f"I{sid}_{i}" for i in range(len(titles))]
        rows.append(
            {
                "session_id": sid,
                "split": "train" if sid <= 6 else "test",
                "item_ids": items,
                "titles": titles,
                "categories": [("Phones" if sid % 2 else "Kitchen"), "Accessories"] + [None] * (len(items) - 2),
                "bundles": [items[:2], items[1:3]],
                "intents": ["gear up", "protect it"],
            }
        )
    return pl.DataFrame(rows)


def build_tiny_student(folder: Path, texts: list[str] | None = None, vocab_size: int = 600, hidden_size: int = 64,
                       layers: int = 2, embedding_std: float | None = None) -> Path:
    """Save a ~0.2M-parameter random Llama and its tokenizer (with chat template) into `folder`; `texts` (real
    prompts, say) join the tokenizer's training corpus so that they tokenize into words, not bytes.

    `embedding_std` redraws the (tied) embeddings at that scale. LoRA trains neither the embeddings nor the head, and
    at the default 0.02 the logits of a normalised 64-wide state stay within a fraction of a nat: such a model can
    rank the right token first but never drive its loss towards 0, which a round trip needs to show."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [BUNDLE_DEFINITION, DETECT_INSTRUCTION, DETECT_WITH_KNOWLEDGE, format_bundles([[1, 2], [3, 4, 5]])]
    corpus += [" ".join(t) for t in tiny_sessions()["titles"].to_list()]
    corpus += ["Products: Bundles: Reasoning: Examples Frequent category patterns Rules <|user|> <|assistant|>"]
    corpus += list(texts or [])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("<pad>"),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if embedding_std is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0, embedding_std)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
