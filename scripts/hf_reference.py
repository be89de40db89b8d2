#!/usr/bin/env python3
"""Golden fixtures for chameleon-rs, made with HF transformers' own Chameleon.

Needs torch, transformers (4.x or 5.x), safetensors and numpy in a local venv *outside* the repo:

    python3 -m venv ~/venvs/chameleon-ref
    ~/venvs/chameleon-ref/bin/pip install torch transformers safetensors numpy
    ~/venvs/chameleon-ref/bin/python scripts/hf_reference.py fixtures

Subcommands
  fixtures       (re)write chameleon-model/tests/fixtures/hf/<case>/ : tiny random
                 ChameleonForConditionalGeneration checkpoints plus golden.safetensors
                 (input_ids int64 [B,T], logits f32 [B,T,V], raw: no image-token masking).
  vq-fixtures    (re)write chameleon-model/tests/fixtures/vq/<case>/ : tiny HF checkpoints whose
                 VQ-VAE encoder is HF's ChameleonVQVAE, a decoder.safetensors for the decoder
                 restated below from Meta's vqgan.py, and golden.safetensors (pixels, encoder
                 output, latent, codes, decoded pixels).
  check-export   load a checkpoint that chameleon-rs exported with transformers, and compare
                 its raw logits against a fixture's golden logits.
  check-run-export
                 load a *run* that `cargo xtask export` wrote (config.json, weights with the VQ
                 tokenizer, tokenizer.model) with transformers and sentencepiece: compare raw
                 logits with chameleon-rs's (`cargo xtask logits` on the same ids), check that
                 ChameleonVQVAE encodes images, and that the tokenizer loads.

CI never runs this script: it only reads the committed fixtures.
"""
import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import ChameleonConfig, ChameleonForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "chameleon-model" / "tests" / "fixtures" / "hf"

VOCAB = 128
CODEBOOK = 32
SPECIALS = {  # deliberately not Chameleon's real ids
    "<s>": 0, "<pad>": 1, "</s>": 2, "<reserved08706>": 3,
    "<racm3:break>": 100, "<eoss>": 101, "<image>": 102,
}
IMAGE_IDS = list(range(50, 50 + CODEBOOK))  # image codes do not start at 4 ...


def image_name(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def vocabulary_map(seed: int) -> dict:
    rng = random.Random(seed)
    ids = IMAGE_IDS[:]
    rng.shuffle(ids)  # ... and are not in codebook order
    vmap = dict(SPECIALS)
    for code, tok in enumerate(ids):
        vmap[image_name(code)] = tok
    taken = set(vmap.values())
    for tok in range(VOCAB):
        if tok not in taken:
            vmap[f"t{tok}"] = tok
    return vmap


def transformers_test_vocabulary_map() -> dict:
    """The vocabulary_map of transformers' own ChameleonModelTester: every id named by chr(id),
    `<image>` at 4, and image tokens named for their *token id* (not a codebook index). No `<s>`,
    `<reserved08706>`, `<racm3:break>` or `<eoss>`: transformers computes logits with it all the
    same, and so must chameleon-rs."""
    vmap = {i: chr(i) for i in range(VOCAB)}
    vmap[4] = "<image>"
    for i in range(10, 10 + CODEBOOK):
        vmap[i] = image_name(i)
    return {v: k for k, v in vmap.items()}


# name, overrides, storage dtype, shard size, config.json flavour
CASES = [
    ("prenorm_mha", dict(num_attention_heads=4, num_key_value_heads=4), torch.float32, None, "native"),
    ("swin_gqa_theta_sharded_v4config",
     dict(swin_norm=True, num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0),
     torch.float32, "150KB", "transformers4"),
    ("prenorm_gqa8to2_bf16", dict(num_attention_heads=8, num_key_value_heads=2), torch.bfloat16, None, "native"),
    ("swin_bias_f16", dict(swin_norm=True, num_attention_heads=4, num_key_value_heads=4, attention_bias=True,
                          mlp_bias=True, rope_theta=1234.0), torch.float16, None, "native"),
    ("transformers_test_vocab", dict(num_attention_heads=4, num_key_value_heads=4, _vocab="transformers-test"),
     torch.float32, None, "native"),
]


def make_config(seed: int, overrides: dict) -> ChameleonConfig:
    overrides = dict(overrides)
    theta = overrides.pop("rope_theta", 10000.0)
    vmap = transformers_test_vocabulary_map() if overrides.pop("_vocab", None) else vocabulary_map(seed)
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        max_position_embeddings=64, rms_norm_eps=1e-5, vocabulary_map=vmap,
        vq_config=dict(embed_dim=8, num_embeddings=CODEBOOK, double_latent=False, latent_channels=32,
                       resolution=8, in_channels=3, base_channels=32, channel_multiplier=[1, 1],
                       num_res_blocks=1, attn_resolutions=None, dropout=0.0),
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    kwargs.update(overrides)
    if int(transformers.__version__.split(".")[0]) >= 5:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    else:
        kwargs["rope_theta"] = theta
    return ChameleonConfig(**kwargs)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, norms included: HF's init (norm weight 1, bias 0) would hide a
    per-head affine bug."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
        elif "norm" in name and name.endswith("bias"):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.15 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def raw_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    # HF's forward sets image-token logits to the f32 minimum; the golden logits are raw.
    hidden = model.model(input_ids=input_ids).last_hidden_state
    return model.lm_head(hidden).float()


def write_fixtures(only: list[str] | None = None) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for seed, (name, overrides, dtype, shard, flavour) in enumerate(CASES):
        if only and name not in only:
            continue
        torch.manual_seed(seed)
        config = make_config(seed, overrides)
        config._attn_implementation = "eager"
        model = ChameleonForConditionalGeneration(config).eval()
        randomize(model, seed)
        out = FIXTURES / name
        for f in out.glob("*"):
            f.unlink()
        out.mkdir(parents=True, exist_ok=True)
        save_kwargs = {"max_shard_size": shard} if shard else {}
        model.to(dtype).save_pretrained(out, safe_serialization=True, **save_kwargs)
        if flavour == "transformers4":
            cfg = json.loads((out / "config.json").read_text())
            params = cfg.pop("rope_parameters", None) or {}
            cfg["rope_theta"] = params.get("rope_theta", cfg.get("rope_theta"))
            cfg["rope_scaling"] = None
            (out / "config.json").write_text(json.dumps(cfg, indent=2))
        # The golden logits are what transformers computes when it loads the stored checkpoint
        # in f32 (a fresh load: `Module.to(bf16)` would also round the RoPE inv_freq buffer).
        model = ChameleonForConditionalGeneration.from_pretrained(
            out, dtype=torch.float32, attn_implementation="eager").eval()
        g = torch.Generator().manual_seed(100 + seed)
        ids = torch.randint(0, VOCAB, (2, 12), generator=g)
        ids[0, 3:7] = torch.tensor(IMAGE_IDS[:4])  # some image tokens in the stream
        logits = raw_logits(model, ids)
        save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()}, str(out / "golden.safetensors"))
        if name == "prenorm_mha":  # the CLI test reads and writes .npy
            np.save(out / "input_ids.npy", ids.numpy().astype(np.int64))
        files = sorted(p.name for p in out.iterdir())
        print(f"{name}: transformers {transformers.__version__}, {dtype}, files {files}")


# ---------------------------------------------------------------------------------------------
# The VQGAN decoder, restated from Meta's chameleon/inference/vqgan.py (taming-transformers).
# HF's Chameleon has no decoder, so this is the reference for ours. Module names match Meta's.

def _normalize(c):
    return torch.nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


def _swish(x):
    return x * torch.sigmoid(x)


class RefResnetBlock(torch.nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1, self.conv1 = _normalize(c_in), torch.nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2, self.conv2 = _normalize(c_out), torch.nn.Conv2d(c_out, c_out, 3, 1, 1)
        if c_in != c_out:
            self.nin_shortcut = torch.nn.Conv2d(c_in, c_out, 1, 1, 0)

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))  # dropout 0
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class RefAttnBlock(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = _normalize(c)
        self.q, self.k, self.v, self.proj_out = (torch.nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)
        k = k.reshape(b, c, h * w)
        w_ = torch.nn.functional.softmax(torch.bmm(q, k) * (int(c) ** (-0.5)), dim=2)
        h_ = torch.bmm(v.reshape(b, c, h * w), w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class RefUpsample(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class RefDecoder(torch.nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = torch.nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = torch.nn.Module()
        self.mid.block_1 = RefResnetBlock(block_in, block_in)
        self.mid.attn_1 = RefAttnBlock(block_in)
        self.mid.block_2 = RefResnetBlock(block_in, block_in)
        self.up = torch.nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = torch.nn.ModuleList(), torch.nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(RefResnetBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(RefAttnBlock(block_in))
            up = torch.nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = RefUpsample(block_in)
                curr_res *= 2
            self.up.insert(0, up)
        self.norm_out = _normalize(block_in)
        self.conv_out = torch.nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


VQ_FIXTURES = ROOT / "chameleon-model" / "tests" / "fixtures" / "vq"

# name, vq_config, decoder key prefix in decoder.safetensors
VQ_CASES = [
    # attention at 16x16 and 8x8, channel change 32 -> 64 (nin_shortcut), latent 32 != embed 16, 2 res blocks
    ("attn_nin_latent_ne_embed", dict(resolution=16, base_channels=32, channel_multiplier=[1, 2],
                                      num_res_blocks=2, attn_resolutions=[16, 8], latent_channels=32,
                                      embed_dim=16, num_embeddings=64), "decoder."),
    ("plain_one_block", dict(resolution=16, base_channels=32, channel_multiplier=[1, 1],
                             num_res_blocks=1, attn_resolutions=None, latent_channels=64,
                             embed_dim=64, num_embeddings=32), "model.vqmodel.decoder."),
]


def write_vq_fixtures() -> None:
    for seed, (name, vq, dec_prefix) in enumerate(VQ_CASES):
        torch.manual_seed(1000 + seed)
        config = make_config(seed, {"num_attention_heads": 4, "num_key_value_heads": 4})
        config.vq_config = transformers.models.chameleon.configuration_chameleon.ChameleonVQVAEConfig(
            in_channels=3, double_latent=False, dropout=0.0, **vq)
        model = ChameleonForConditionalGeneration(config).eval()
        randomize(model, 1000 + seed)
        vqm = model.model.vqmodel
        with torch.no_grad():  # a codebook on the scale of the latents, so codes spread out
            vqm.quantize.embedding.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))
        decoder = RefDecoder(ch=vq["base_channels"], out_ch=3, ch_mult=vq["channel_multiplier"],
                             num_res_blocks=vq["num_res_blocks"], attn_resolutions=vq["attn_resolutions"] or [],
                             resolution=vq["resolution"], z_channels=vq["latent_channels"]).eval()
        randomize(decoder, 2000 + seed)
        out = VQ_FIXTURES / name
        out.mkdir(parents=True, exist_ok=True)
        for f in out.glob("*"):
            f.unlink()
        model.save_pretrained(out, safe_serialization=True)
        save_file({dec_prefix + k: v.contiguous() for k, v in decoder.state_dict().items()}, str(out / "decoder.safetensors"))
        g = torch.Generator().manual_seed(3000 + seed)
        pixels = torch.rand((2, 3, vq["resolution"], vq["resolution"]), generator=g) * 2 - 1
        with torch.no_grad():
            encoder_out = vqm.encoder(pixels.clone())
            latent = vqm.quant_conv(encoder_out)
            _, _, codes = vqm.quantize(latent)
            codes = codes.reshape(pixels.shape[0], -1)
            r = latent.shape[-1]
            z_q = vqm.quantize.embedding(codes).reshape(pixels.shape[0], r, r, -1).permute(0, 3, 1, 2)
            decoded = decoder(vqm.post_quant_conv(z_q))
        save_file({"pixels": pixels, "encoder_out": encoder_out.contiguous(), "latent": latent.contiguous(),
                   "codes": codes.to(torch.int64).contiguous(), "decoded": decoded.contiguous()},
                  str(out / "golden.safetensors"))
        np.save(out / "pixels.npy", pixels.numpy().astype(np.float32))
        used = len(set(codes.flatten().tolist()))
        print(f"{name}: latent {tuple(latent.shape)}, {used} distinct codes of {vq['num_embeddings']}")


def check_export(exported: Path, golden: Path, tol: float) -> int:
    model = ChameleonForConditionalGeneration.from_pretrained(exported, attn_implementation="eager").float().eval()
    g = load_file(str(golden))
    logits = raw_logits(model, g["input_ids"])
    diff = (logits - g["logits"]).abs().max().item()
    print(f"transformers {transformers.__version__} loaded {exported}: max |logit diff| = {diff:.3e} (tolerance {tol})")
    return 0 if diff <= tol else 1


def check_run_export(exported: Path, ids: Path, ours: Path, pixels: Path, codes: Path, tol: float) -> int:
    import sentencepiece as spm
    model = ChameleonForConditionalGeneration.from_pretrained(exported, attn_implementation="eager").float().eval()
    input_ids = torch.from_numpy(np.load(ids)).long()
    logits = raw_logits(model, input_ids)
    diff = (logits - torch.from_numpy(np.load(ours))).abs().max().item()
    with torch.no_grad():
        hf_codes = model.model.vqmodel.encode(torch.from_numpy(np.load(pixels))).image_tokens
    our_codes = torch.from_numpy(np.load(codes)).long()
    same = int((hf_codes.reshape(our_codes.shape) == our_codes).sum())
    sp = spm.SentencePieceProcessor(model_file=str(exported / "tokenizer.model"))
    vocab = json.loads((exported / "vocab.json").read_text())
    pieces = sp.encode("To be, or not to be", out_type=int)
    print(f"transformers {transformers.__version__} loaded {exported}: max |logit diff| = {diff:.3e} "
          f"(tolerance {tol}); ChameleonVQVAE.encode: {same} of {our_codes.numel()} codes as ours; sentencepiece: "
          f"{sp.get_piece_size()} pieces, 'To be, or not to be' -> {len(pieces)} pieces "
          f"(+{vocab['text_offset']} in the unified vocabulary)")
    return 0 if diff <= tol and same == our_codes.numel() else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    fx = sub.add_parser("fixtures")
    fx.add_argument("--only", nargs="*", help="case names to rewrite (default: every case)")
    sub.add_parser("vq-fixtures")
    ce = sub.add_parser("check-export")
    ce.add_argument("--exported", type=Path, required=True)
    ce.add_argument("--golden", type=Path, required=True)
    ce.add_argument("--tol", type=float, default=1e-4)
    cr = sub.add_parser("check-run-export")
    cr.add_argument("--exported", type=Path, required=True)
    cr.add_argument("--ids", type=Path, required=True, help="int64 .npy [batch, seq]")
    cr.add_argument("--logits", type=Path, required=True, help="chameleon-rs's f32 .npy logits for --ids")
    cr.add_argument("--pixels", type=Path, required=True, help="f32 .npy [batch, 3, R, R] in [-1, 1]")
    cr.add_argument("--codes", type=Path, required=True, help="chameleon-rs's codes for --pixels (vq encode)")
    cr.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.cmd == "fixtures":
        write_fixtures(args.only)
        return 0
    if args.cmd == "vq-fixtures":
        write_vq_fixtures()
        return 0
    if args.cmd == "check-run-export":
        return check_run_export(args.exported, args.ids, args.logits, args.pixels, args.codes, args.tol)
    return check_export(args.exported, args.golden, args.tol)


if __name__ == "__main__":
    sys.exit(main())
