"""Random-weight Wan pipelines, built entirely offline (no hub download): for the adapter's
tests (`tiny`) and the GPU smoke benchmark (`1.3b`: the Wan 2.1 1.3B transformer's shape
and the Wan VAE at its real size). The tokenizer is made in memory from a short vocabulary;
the UMT5 text encoder has 2 layers (it runs once per job), at the real width for `1.3b`.
Needs the diffusers extra."""

from __future__ import annotations

from typing import Any, Literal

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


def random_pipeline(
    shape: Literal["tiny", "1.3b"],
    device: str = "cpu",
    task: Literal["t2v", "i2v", "i2v-clip", "ti2v"] = "t2v",
) -> Any:
    """A `WanPipeline` with random weights on `device` (float32 tiny, bfloat16 1.3b); for
    the tiny shape also the image-to-video layouts: `i2v` (Wan 2.2 I2V: the image's latents
    and a mask beside the noise), `i2v-clip` (Wan 2.1 I2V: that and a CLIP image encoder),
    `ti2v` (Wan 2.2 TI2V: the image as the first latent frame, `expand_timesteps`)."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    tiny = shape == "tiny"
    if task != "t2v" and not tiny:
        raise ValueError("the image-to-video layouts come in the tiny shape only")
    torch.manual_seed(0)
    tokenizer = small_tokenizer()
    dtype = torch.float32 if tiny else torch.bfloat16
    text_dim = 32 if tiny else 4096
    with torch.device(device):
        encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer), d_model=text_dim, d_kv=8 if tiny else 64,
                d_ff=64 if tiny else 10240, num_layers=2, num_heads=4 if tiny else 64,
                relative_attention_num_buckets=8 if tiny else 32, is_encoder_decoder=False,
                pad_token_id=0, eos_token_id=1,
            )
        ).to(dtype)  # fmt: skip
        if tiny:
            beside = task in ("i2v", "i2v-clip")  # 4 mask channels and the image's 16
            clip = {"image_dim": 32, "added_kv_proj_dim": 24} if task == "i2v-clip" else {}
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                in_channels=36 if beside else 16, out_channels=16, text_dim=32, freq_dim=256,
                ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=32, **clip,
            )  # fmt: skip
            vae = AutoencoderKLWan(
                base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True],
            )  # fmt: skip
        else:
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            )  # fmt: skip
            vae = AutoencoderKLWan()
        transformer = transformer.to(dtype)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    parts = dict(
        tokenizer=tokenizer, text_encoder=encoder, transformer=transformer, vae=vae,
        scheduler=scheduler,
    )  # fmt: skip
    if task == "t2v":
        pipe = WanPipeline(**parts)
    else:
        if task == "i2v-clip":
            parts.update(_clip_image_encoder(device))
        pipe = WanImageToVideoPipeline(**parts, expand_timesteps=task == "ti2v")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _clip_image_encoder(device: str) -> dict[str, Any]:
    """A 2-layer CLIP vision tower (32 wide, 32 px) and its image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=32,
    )  # fmt: skip
    processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    return {"image_encoder": CLIPVisionModel(config).to(device), "image_processor": processor}


def small_tokenizer() -> Any:
    """A unigram tokenizer over `WORDS` and single letters, made in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0 - i / 100) for i, w in enumerate(WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    raw = Tokenizer(models.Unigram(vocab, unk_id=2))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
