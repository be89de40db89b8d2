#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench`: the same workloads in PyTorch eager and HF
transformers' Chameleon, written as the same JSON report.

    python bench/torch_reference.py --only P1,P2,P3,peak --threads 2 --out torch.json

`cargo xtask bench --vs-torch PYTHON` runs it in alternating rounds with ours. Needs torch and
transformers (5.x still has Chameleon); it is not a CI dependency.

  peak   f32 (or bf16) 1024x1024 matmul, best of --runs
  P1     one training step: forward (raw logits, no image-token masking, as ours), masked CE +
         z-loss 1e-5, backward, global-norm clip 1.0, AdamW (0.9, 0.95, eps 1e-5, wd 0.1);
         d 256, 4 layers, 4 heads, ffn 768, vocab 4096, seq 256, batch 8. P1-off: pre-norm, no
         QK-norm; P1-on: QK-norm + reordered ("swin") norm.
  P1-350m  P1 at experiments/gpu-350m.toml's shape (d 1024, 24 layers, 16 heads, ffn 3328),
         seq 1024, batch 16 (for GPUs).
  P2     ChameleonForConditionalGeneration.generate: greedy, KV cache, prompt 32, exactly 64 new
         tokens (min_new_tokens), batch 1 and 8.
  P3     ChameleonVQVAE.encode: resolution 32, base 32, multipliers [1,1,1], 2 res-blocks,
         attention at 8, latent 32, embed 32, 256 codes, batch 8.
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import ChameleonConfig, ChameleonForConditionalGeneration
from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

VOCAB, D, LAYERS, HEADS, FFN, CODES = 4096, 256, 4, 4, 768, 1024
SEQ, BATCH = 256, 8


def image_name(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def vocabulary_map() -> dict:
    # Our contiguous layout: seven specials, then the codebook, then text.
    names = ["<s>", "</s>", "<pad>", "<racm3:break>", "<eoss>", "<reserved08706>", "<image>"]
    vmap = {n: i for i, n in enumerate(names)}
    vmap.update({image_name(c): 7 + c for c in range(CODES)})
    vmap.update({f"t{t}": t for t in range(7 + CODES, VOCAB)})
    return vmap


def vq_config() -> dict:
    return dict(embed_dim=32, num_embeddings=256, double_latent=False, latent_channels=32, resolution=32,
                in_channels=3, base_channels=32, channel_multiplier=[1, 1, 1], num_res_blocks=2,
                attn_resolutions=[8], dropout=0.0)


def config(fixes: bool, big: bool = False) -> ChameleonConfig:
    d, ffn, layers, heads = (1024, 3328, 24, 16) if big else (D, FFN, LAYERS, HEADS)
    kwargs = dict(vocab_size=VOCAB, hidden_size=d, intermediate_size=ffn, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                  rms_norm_eps=1e-5, qk_layernorm=fixes, swin_norm=fixes, attention_dropout=0.0,
                  vocabulary_map=vocabulary_map(), vq_config=vq_config(),
                  bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if int(transformers.__version__.split(".")[0]) >= 5:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    return ChameleonConfig(**kwargs)


def matmul_params(model) -> int:
    """Parameters that take part in matmuls: the language model but its input embedding."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith(("model.vqmodel", "vqmodel")) and "embed_tokens" not in n)


def train_flops_per_token(model, seq: int) -> float:
    c = model.config
    return 6 * matmul_params(model) + 12 * c.num_hidden_layers * c.hidden_size * seq


def decode_flops_per_token(model, context: int) -> float:
    return 2 * matmul_params(model) + 4 * LAYERS * D * context


def timed(fn, warmup: int, runs: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="peak,P1-off,P1-on,P2-b1,P2-b8,P3")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bf16 = args.precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.manual_seed(0)
    ids = [s.strip() for s in args.only.split(",") if s.strip()]

    peak = None
    results = []

    def add(id_, what, seconds, work, unit, mfu=None):
        results.append(dict(id=id_, what=what, seconds=seconds, work=work, unit=unit, rate=work / seconds, mfu=mfu))
        print(f"torch {id_}: {seconds:.4f} s per run, {work / seconds:.1f} {unit}", flush=True)

    # The peak is needed for MFU, so it is measured first whatever --only says.
    a = torch.randn(1024, 1024, device=dev, dtype=dtype)
    b = torch.randn(1024, 1024, device=dev, dtype=dtype)
    timed(lambda: a @ b, 2, 1, sync)
    best = min(timed(lambda: a @ b, 0, 1, sync) for _ in range(max(args.runs, 1)))
    flops = 2 * 1024 ** 3
    peak = dict(flops=flops / best, source=f"{args.precision} matmul 1024x1024 on this device (measured, torch)")
    if "peak" in ids:
        add("peak", f"{args.precision} matmul 1024x1024 (best of {args.runs})", best, flops, "FLOP/s")

    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16)

    for id_ in [i for i in ids if i.startswith("P1")]:
        fixes = id_ != "P1-off"
        big = id_ == "P1-350m"
        batch, seq = (16, 1024) if big else (BATCH, SEQ)
        model = ChameleonForConditionalGeneration(config(fixes, big)).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
        tokens = torch.randint(7, VOCAB, (batch, seq + 1), device=dev)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask = torch.ones_like(targets, dtype=torch.float32)

        def step():
            with autocast:
                hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state
                logits = model.lm_head(hidden)
            logits = logits.float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none")
            ce = (nll * mask.reshape(-1)).sum() / mask.sum()
            log_z = torch.logsumexp(logits, dim=-1)
            z = 1e-5 * ((log_z ** 2) * mask).sum() / mask.sum()
            (ce + z).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        s = timed(step, 2, args.runs, sync)
        rate = batch * seq / s
        fixes_txt = "QK-norm + reordered norm" if fixes else "no QK-norm, pre-norm"
        c = model.config
        add(id_, f"train step d{c.hidden_size} L{c.num_hidden_layers} seq{seq} b{batch} {args.precision}, {fixes_txt}",
            s, batch * seq, "tokens/s", rate * train_flops_per_token(model, seq) / peak["flops"])
        del model, opt

    for id_ in [i for i in ids if i.startswith("P2")]:
        b = 1 if id_ == "P2-b1" else 8
        model = ChameleonForConditionalGeneration(config(False)).to(dev).eval()
        prompt = torch.randint(7 + CODES, VOCAB, (b, 32), device=dev)

        @torch.no_grad()
        def gen():
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64,
                           min_new_tokens=64, do_sample=False, use_cache=True, pad_token_id=2)

        s = timed(gen, 1, args.runs, sync)
        rate = b * 64 / s
        add(id_, f"greedy decode, KV cache, batch {b}, prompt 32, 64 new", s, b * 64, "tokens/s",
            rate * decode_flops_per_token(model, 64) / peak["flops"])
        del model

    if "P3" in ids:
        vq = ChameleonVQVAE(transformers.models.chameleon.configuration_chameleon.ChameleonVQVAEConfig(**vq_config()))
        vq = vq.to(dev).eval()
        pixels = torch.rand(8, 3, 32, 32, device=dev) * 2 - 1

        @torch.no_grad()
        def enc():
            vq.encode(pixels)

        s = timed(enc, 1, args.runs, sync)
        add("P3", "VQ encode 32px, batch 8", s, 8, "images/s")

    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    report = dict(side=f"PyTorch {torch.__version__} eager, transformers {transformers.__version__}",
                  device=name, threads=torch.get_num_threads(), precision=args.precision, peak=peak,
                  results=results)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
