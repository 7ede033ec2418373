"""Where CPU prefill time goes: the kernels a 2-core machine offers SmolLM2, side by side in one process.

    .venv/bin/python bench/cpu_kernels.py [--threads 2] [--no-llama]

Prints one line per figure (bench/README.md quotes them):
- microseconds of SmolLM2's `Linear` shapes at decode-step (1-16 rows) and prefill (300-1,000 rows) sizes, with
  the weight row-major (as checkpoints store it) and column-major (its transpose contiguous);
- GFLOP/s of one `Linear` of SmolLM2's MLP shape (1,000 tokens x 576 -> 1,536) in fp32, bf16, and int8 through torch's
  dynamic quantization (fbgemm / oneDNN / x86 engines), with the int8 output's relative error;
- SmolLM2-135M prefill of 1,000 tokens (tokens/s) and one decode step at batch 1 and 4, in fp32 (checkpoint layout
  and column-major) and bf16;
- how far int8 dynamic quantization moves SmolLM2's next-token ranking on a real prompt (top-1, top-10 overlap);
- llama.cpp prefill of 1,000 tokens from the shipped Q4_1 GGUF, and from Q8_0 / F16 files requantized from it.
Best of 3 repetitions each; nothing else should run on the machine.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import random
import tempfile
import time
from pathlib import Path

import torch


def best_seconds(fn, reps: int = 3) -> float:
    fn()  # warm-up: kernel selection, allocations
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def linear_kernels() -> None:
    x, layer = torch.randn(1000, 576), torch.nn.Linear(576, 1536, bias=False)
    flop = 2 * 1000 * 576 * 1536
    for dtype in (torch.float32, torch.bfloat16):
        a, w = x.to(dtype), layer.weight.detach().to(dtype)
        seconds = best_seconds(lambda: [torch.nn.functional.linear(a, w) for _ in range(20)]) / 20
        print(f"linear 1000x576x1536 {str(dtype).removeprefix('torch.')}: {flop / seconds / 1e9:.0f} GFLOP/s")
    reference = layer(x)
    for engine in ("fbgemm", "onednn", "x86"):
        torch.backends.quantized.engine = engine
        quantized = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(copy.deepcopy(layer)), {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        )
        seconds = best_seconds(lambda: [quantized(x) for _ in range(20)]) / 20
        error = float((quantized(x) - reference).abs().mean() / reference.abs().mean())
        print(f"linear 1000x576x1536 int8 dynamic ({engine}): {flop / seconds / 1e9:.0f} GOP/s, relative error {error:.3f}")


def weight_layouts() -> None:
    for k, n in ((576, 576), (576, 1536), (1536, 576), (576, 49152)):
        row_major = torch.randn(n, k)
        column_major = row_major.t().contiguous().t()
        for m in (1, 4, 16, 300, 1000):
            x, reps = torch.randn(m, k), (20 if m < 300 else 3)
            seconds = [best_seconds(lambda: [torch.nn.functional.linear(x, w) for _ in range(reps)]) / reps
                       for w in (row_major, column_major)]
            same = torch.equal(torch.nn.functional.linear(x, row_major), torch.nn.functional.linear(x, column_major))
            print(f"linear {m}x{k}x{n} fp32: row-major weight {seconds[0] * 1e6:.0f} us, column-major "
                  f"{seconds[1] * 1e6:.0f} us, outputs {'equal' if same else 'differ in rounding'}")


def column_major_linears(model: torch.nn.Module) -> None:
    """Every Linear weight stored as its contiguous transpose; a tied LM head gets its own copy."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight = torch.nn.Parameter(module.weight.detach().t().contiguous().t(), requires_grad=False)


def smollm2_prefill() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kd_bundle.models import smollm2_folder

    folder = smollm2_folder()
    ids = torch.randint(100, 40000, (4, 1000))
    models = {}
    for name, dtype, layout in (("fp32", torch.float32, False), ("fp32 column-major", torch.float32, True),
                                ("bf16", torch.bfloat16, False)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        if layout:
            column_major_linears(model)
        models[name] = model
        steps = []
        with torch.inference_mode():
            prefill = best_seconds(lambda: model(ids[:1], logits_to_keep=1))
            for batch in (1, 4):
                cache = model(ids[:batch], use_cache=True, logits_to_keep=1).past_key_values

                def step() -> None:
                    model(ids[:batch, -1:], past_key_values=cache, logits_to_keep=1)
                    cache.crop(-1)  # back to the prompt, so every repetition decodes position 1,001

                steps.append(f"{1000 * best_seconds(step):.0f} ms at batch {batch}")
        print(f"smollm2 {name}: prefill 1000 tokens {1000 / prefill:.0f} tokens/s, decode step {', '.join(steps)}")
    fp32 = models["fp32"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Please detect bundles from a sequence of products: product1: camera body, "
          "product2: camera battery, product3: SD card 64GB, product4: running shoes. The answer format is: "
          "{'bundle number':['product number']}."}], tokenize=False, add_generation_prompt=True) + "Bundles: {"
    real = tokenizer(prompt, return_tensors="pt")["input_ids"]
    quantized = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(fp32), {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
    )
    with torch.inference_mode():
        a, b = fp32(real).logits[0, -1], quantized(real).logits[0, -1]
    overlap = len(set(a.topk(10).indices.tolist()) & set(b.topk(10).indices.tolist()))
    print(f"smollm2 int8 dynamic vs fp32 on a {real.shape[1]}-token prompt: same top-1 {bool(a.argmax() == b.argmax())}, "
          f"top-10 overlap {overlap}/10")


def llama_cpp_prefill(threads: int) -> None:
    import llama_cpp

    from kd_bundle.teacher.backends import _gguf

    source = _gguf("smollm2")  # the GGUF the embedded teacher serves
    tokens = [random.Random(0).randrange(100, 40000) for _ in range(1000)]
    with tempfile.TemporaryDirectory() as tmp:
        files = {"q4_1 (shipped)": source}
        for name, ftype in (("q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0), ("f16", llama_cpp.LLAMA_FTYPE_MOSTLY_F16)):
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.allow_requantize, params.nthread = ftype, True, threads
            target = Path(tmp) / f"smollm2-{name}.gguf"
            if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
                print(f"llama.cpp: requantizing to {name} failed")
                continue
            files[name] = target
        for name, path in files.items():
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_batch=512, n_threads=threads,
                                  n_threads_batch=threads, verbose=False)

            def prefill() -> None:
                llm.reset()
                llm.eval(tokens)

            print(f"llama.cpp {name}: prefill 1000 tokens {1000 / best_seconds(prefill):.0f} tokens/s")
            llm.close()  # free the model before the next one loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-llama", action="store_true", help="skip the llama.cpp rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads")
    weight_layouts()
    linear_kernels()
    smollm2_prefill()
    if not args.no_llama:
        llama_cpp_prefill(args.threads)


if __name__ == "__main__":
    main()
