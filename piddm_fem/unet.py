"""A DDPM++-like U-Net in plain torch: the raw network F(x, c_noise) inside ``EDMPrecond``.

Residual blocks with GroupNorm/SiLU and a per-block noise-embedding affine, self-attention at the
levels listed in ``attn_levels`` (low resolution), positional or Fourier noise embedding, and
resampling inside the residual blocks (2x2 average pool down, nearest up) as in DDPM++.

Grids of any size S (the dataset grids include the boundary, so S = n + 1 is often odd, e.g. 33)
are padded internally to the next multiple of 2^(levels - 1) and cropped back. Padding, both for
that and for every 3x3 convolution, follows ``padding``:

- ``"zeros"``: for Dirichlet boundaries (the dataset's ``boundary`` attribute); the domain edge is a real
  boundary and the network sees zeros beyond it.
- ``"circular"``: for periodic problems, whose grids should then have S a multiple of
  2^(levels - 1) with no duplicated end node, so that the wrap-around is the true period.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from piddm_fem.errors import PiddmError

def padding_for(boundary, padding: str = "auto") -> str:
    """The padding to use: ``padding`` itself, or for "auto" the one that the dataset's boundary
    types (one per axis, ``DatasetInfo.boundary``) call for."""
    if padding in ("zeros", "circular"):
        return padding
    if padding != "auto":
        raise PiddmError(f"unknown padding {padding!r}; use auto, zeros or circular")
    if all(b == "periodic" for b in boundary):
        return "circular"
    if not any(b == "periodic" for b in boundary):  # Dirichlet or open: the edge is the domain's
        return "zeros"
    raise PiddmError(f"no single padding fits boundaries {list(boundary)}; pass --padding zeros or circular")


@dataclass
class UNetConfig:
    """Architecture; ``channels`` in = out (the dataset channels), sizes from a preset."""

    channels: int
    model_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2)
    num_blocks: int = 1
    attn_levels: tuple[int, ...] = (1,)
    dropout: float = 0.0
    embedding: str = "positional"
    padding: str = "zeros"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        for key in ("channel_mult", "attn_levels"):
            d[key] = tuple(d[key])
        return cls(**d)


PRESETS = {
    # CPU tests and demo: 0.21M parameters, a training step at S=32, batch 8 in ~0.25 s (1 core).
    "tiny": dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_levels=(1,)),
    # GPU (slow on CPU) teacher for S=32..64: 7.7M parameters.
    "small": dict(model_channels=64, channel_mult=(1, 2, 2), num_blocks=2, attn_levels=(2,),
                  dropout=0.1),
    # Paper-size DDPM++ (CIFAR-10-like, 4 levels): 68M parameters, GPU.
    "base": dict(model_channels=128, channel_mult=(1, 2, 2, 2), num_blocks=4, attn_levels=(2,),
                 dropout=0.13),
}


def preset(size: str, channels: int, padding: str = "zeros") -> UNetConfig:
    if size not in PRESETS:
        raise PiddmError(f"unknown model size {size!r}; choose one of {', '.join(PRESETS)}")
    return UNetConfig(channels=channels, padding=padding, **PRESETS[size])


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, max(ch // 4, 1)), num_channels=ch, eps=1e-6)


def _conv3(cin: int, cout: int, padding: str) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding)


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoids of the scalar c_noise."""

    def __init__(self, dim: int, max_positions: int = 10000):
        super().__init__()
        freqs = (1 / max_positions) ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float()[:, None] * self.freqs[None]
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (NCSN++ style); frequencies fixed at initialisation."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float()[:, None] * (2 * math.pi * self.freqs[None])
        return torch.cat([x.cos(), x.sin()], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention over the pixels, residual, zero-initialised output."""

    def __init__(self, ch: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(ch // head_dim, 1)
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, noise embedding as scale/shift, optional resample and attention."""

    def __init__(self, cin: int, cout: int, emb_ch: int, padding: str, dropout: float = 0.0,
                 resample: str | None = None, attention: bool = False):
        super().__init__()
        self.resample = resample
        self.norm0 = _norm(cin)
        self.conv0 = _conv3(cin, cout, padding)
        self.affine = nn.Linear(emb_ch, 2 * cout)
        self.norm1 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _conv3(cout, cout, padding)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = Attention(cout) if attention else nn.Identity()

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(h) * (1 + scale) + shift)
        h = self.conv1(self.dropout(h))
        x = (h + self.skip(self._resample(x))) / math.sqrt(2)
        return self.attn(x)


class UNet(nn.Module):
    """F(x, c_noise): [B, C, S, S], [B] -> [B, C, S, S] for any S >= 3."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        if config.embedding not in ("positional", "fourier"):
            raise PiddmError(f"unknown noise embedding {config.embedding!r}; use positional or fourier")
        if config.padding not in ("zeros", "circular"):
            raise PiddmError(f"unknown padding {config.padding!r}; use zeros or circular")
        self.config = config
        mc, pad, drop = config.model_channels, config.padding, config.dropout
        emb_ch = 4 * mc
        embed = PositionalEmbedding if config.embedding == "positional" else FourierEmbedding
        self.embed = nn.Sequential(embed(mc), nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.levels = len(config.channel_mult)

        self.conv_in = _conv3(config.channels, mc, pad)
        self.enc = nn.ModuleList()
        skips, ch = [mc], mc
        for level, mult in enumerate(config.channel_mult):
            attn = level in config.attn_levels
            if level > 0:
                self.enc.append(ResBlock(ch, ch, emb_ch, pad, drop, resample="down"))
                skips.append(ch)
            for _ in range(config.num_blocks):
                self.enc.append(ResBlock(ch, mc * mult, emb_ch, pad, drop, attention=attn))
                ch = mc * mult
                skips.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_ch, pad, drop, attention=True),
                                  ResBlock(ch, ch, emb_ch, pad, drop)])
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            attn = level in config.attn_levels
            for _ in range(config.num_blocks + 1):
                self.dec.append(ResBlock(ch + skips.pop(), mc * mult, emb_ch, pad, drop, attention=attn))
                ch = mc * mult
            if level > 0:
                self.dec.append(ResBlock(ch, ch, emb_ch, pad, drop, resample="up"))
        self.norm_out = _norm(ch)
        self.conv_out = _conv3(ch, config.channels, pad)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        S_h, S_w = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        ph, pw = -S_h % m, -S_w % m
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if ph or pw:
            x = F.pad(x, pads, mode="constant" if self.config.padding == "zeros" else "circular")
        emb = self.embed(c_noise)

        # the layout of the weights (``module.to(memory_format=...)``): a 3 x 3 kernel's input
        # channels have stride 1 only in channels_last
        if self.conv_in.weight.stride(1) == 1:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.dec:
            if block.resample != "up":
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[..., pads[2]:pads[2] + S_h, pads[0]:pads[0] + S_w].contiguous()
