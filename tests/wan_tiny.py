"""A tiny random-weight Wan pipeline built entirely offline (no hub download): a UMT5 text
encoder from a small config, a tokenizer made in memory from a short vocabulary, a 2-layer
transformer and a small VAE, saved as a diffusers pipeline directory, as an operator's
downloaded weights would be."""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "a",
    "the",
    "red",
    "blue",
    "cat",
    "dog",
    "on",
    "in",
    "over",
    "sea",
    "sky",
    "city",
    "night",
    "runs",
    "flies",
    "paper",
    "boat",
]


def build(path: Path) -> Path:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0 - i / 100) for i, w in enumerate(WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    raw = Tokenizer(models.Unigram(vocab, unk_id=2))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, is_encoder_decoder=False, pad_token_id=0,
            eos_token_id=1,
        )
    )  # fmt: skip
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=encoder, transformer=transformer, vae=vae,
        scheduler=scheduler,
    )  # fmt: skip
    pipe.save_pretrained(str(path))
    return path
