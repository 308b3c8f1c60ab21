"""A small SmolVLA-style policy: SigLIP-style vision + Llama-style backbone + flow-matching action expert.

All weights are random-initialised from transformers configs (no hub). The action expert cross-attends to the
backbone's prefix (image patches, instruction tokens, proprio state) and predicts the flow-matching velocity
``noise - actions`` for a chunk of future actions (SmolVLA/pi0 convention). An optional frozen LAQ encoder
(``model.laq.checkpoint``) adds a latent-action auxiliary loss.
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

from trainer.config import Config

VOCAB_SIZE = 384  # transformers.ByT5Tokenizer: 256 bytes + 3 specials + 125 extra ids


class LaqEncoder(nn.Module):
    """Latent-action encoder of stage 1: an action chunk -> a latent code (frozen in stage 2)."""

    def __init__(self, chunk: int, action_dim: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(chunk * action_dim, 128), nn.GELU(), nn.Linear(128, latent_dim))

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(actions.flatten(1)))


def save_laq_checkpoint(path: str | Path, cfg: Config, seed: int = 0) -> Path:
    """Write a stage-1 LAQ checkpoint this model can load (random weights; for tests and demos)."""
    torch.manual_seed(seed)
    head = cfg.model.action_head
    enc = LaqEncoder(head.chunk_size, head.action_dim, cfg.model.laq.latent_dim)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"laq_state_dict": enc.state_dict(), "latent_dim": cfg.model.laq.latent_dim}, path)
    return path


def load_laq(path: str, cfg: Config) -> LaqEncoder:
    """Load a LAQ checkpoint strictly; a ValueError with one line says why it does not fit."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"model.laq.checkpoint: {file} does not exist")
    head = cfg.model.action_head
    enc = LaqEncoder(head.chunk_size, head.action_dim, cfg.model.laq.latent_dim)
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
        enc.load_state_dict(blob["laq_state_dict"])
    except Exception as exc:  # a wrong file shows up as many different exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model.laq.checkpoint: {file} does not load ({type(exc).__name__}: {first})") from None
    enc.requires_grad_(False)
    return enc


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    angles = t[:, None] * 1000.0 * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SmolVLA(L.LightningModule):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        m = cfg.model
        v, lm, head = m.vision, m.language, m.action_head
        self.vision = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=v.hidden_size, num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
            intermediate_size=v.intermediate_size, patch_size=v.patch_size,
            image_size=cfg.data.adapter.tf.image_size, attn_implementation=m.attn_implementation))
        self.backbone = LlamaModel(LlamaConfig(
            vocab_size=VOCAB_SIZE, hidden_size=lm.hidden_size, num_hidden_layers=lm.num_layers,
            num_attention_heads=lm.num_heads, num_key_value_heads=lm.num_heads,
            intermediate_size=lm.intermediate_size, max_position_embeddings=1024,
            attn_implementation=m.attn_implementation))
        self.vision_proj = nn.Linear(v.hidden_size, lm.hidden_size)
        self.state_proj = nn.Linear(head.action_dim, lm.hidden_size)
        self.prefix_proj = nn.Linear(lm.hidden_size, head.hidden_size)
        self.action_in = nn.Linear(head.action_dim, head.hidden_size)
        self.time_mlp = nn.Sequential(nn.Linear(head.hidden_size, head.hidden_size), nn.SiLU(),
                                      nn.Linear(head.hidden_size, head.hidden_size))
        self.action_pos = nn.Parameter(torch.zeros(head.chunk_size, head.hidden_size))
        self.expert = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(head.hidden_size, head.num_heads, 4 * head.hidden_size, dropout=0.0,
                                       batch_first=True, norm_first=True),
            num_layers=head.num_layers)
        self.action_out = nn.Linear(head.hidden_size, head.action_dim)
        self.laq = load_laq(m.laq.checkpoint, cfg) if m.laq.checkpoint else None
        self.laq_head = nn.Linear(lm.hidden_size, m.laq.latent_dim) if self.laq is not None else None

    # ---------------------------------------------------------------------------------------------------------
    def prefix(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = batch["image"].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        patches = self.vision_proj(self.vision(pixel_values=pixels).last_hidden_state)
        text = self.backbone.embed_tokens(batch["input_ids"])
        state = self.state_proj(batch["state"])[:, None]
        embeds = torch.cat([patches, text, state], dim=1)
        ones = torch.ones(patches.shape[:2], dtype=batch["attention_mask"].dtype, device=pixels.device)
        mask = torch.cat([ones, batch["attention_mask"], ones[:, :1]], dim=1)
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return hidden, mask

    def velocity(self, hidden, mask, noisy_actions, t) -> torch.Tensor:
        tokens = self.action_in(noisy_actions) + self.action_pos[None]
        tokens = tokens + self.time_mlp(_timestep_embedding(t, tokens.shape[-1]))[:, None]
        out = self.expert(tokens, self.prefix_proj(hidden), memory_key_padding_mask=mask == 0)
        return self.action_out(out)

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        hidden, mask = self.prefix(batch)
        actions, amask = batch["actions"], batch["action_mask"][:, None, :]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        # Beta(1.5, 1) time sampling as in pi0/SmolVLA: more weight near the noisy end.
        u = torch.rand(actions.shape[0], generator=generator, device=actions.device)
        t = (u ** (1 / 1.5)) * 0.999 + 0.001
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        err = (self.velocity(hidden, mask, x_t, t) - (noise - actions)) ** 2 * amask
        loss = err.sum() / (amask.sum() * actions.shape[1]).clamp(min=1)
        if self.laq is not None:
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            target = self.laq(actions * amask)
            loss = loss + self.cfg.model.laq.loss_weight * nn.functional.mse_loss(self.laq_head(pooled), target)
        return loss

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=False, batch_size=batch["actions"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        # Fixed noise per val batch: val loss moves only with the weights.
        gen = torch.Generator(device=batch["actions"].device).manual_seed(1000 + batch_idx)
        loss = self.loss(batch, generator=gen)
        self.log("val_loss", loss, on_epoch=True, batch_size=batch["actions"].shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.cfg.training.lr)
