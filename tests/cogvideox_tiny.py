"""A tiny random-weight CogVideoX pipeline, saved as a diffusers pipeline directory, as an
operator's downloaded weights would be (built offline: a 2-layer T5 encoder, a 1-layer
transformer, a small VAE; the DPM scheduler of the 5B models, or DDIM of the 2B; `i2v`: the
image-to-video layout, the image's latents beside the noise, with rotary positions;
`learned`: also learned positional embeddings, as CogVideoX-5B-I2V has, which fix the size
and length it runs at: 32x32, 9 frames here)."""

from __future__ import annotations

from pathlib import Path


def build(path: Path, *, scheduler: str = "dpm", i2v: bool = False, learned: bool = False) -> Path:
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from reelgen.models.wan_random import small_tokenizer

    torch.manual_seed(0)
    tokenizer = small_tokenizer()
    encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, is_encoder_decoder=False, pad_token_id=0,
            eos_token_id=1,
        )
    )  # fmt: skip
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16 if i2v else 8,
        in_channels=8 if i2v else 4, out_channels=4, time_embed_dim=2, text_embed_dim=32,
        num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16,
        use_rotary_positional_embeddings=i2v, use_learned_positional_embeddings=learned,
    )  # fmt: skip
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
        latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4,
    )  # fmt: skip
    kind = CogVideoXDPMScheduler if scheduler == "dpm" else CogVideoXDDIMScheduler
    pipe = (CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline)(
        tokenizer=tokenizer,
        text_encoder=encoder,
        vae=vae,
        transformer=transformer,
        scheduler=kind(),
    )
    pipe.save_pretrained(str(path))
    return path
