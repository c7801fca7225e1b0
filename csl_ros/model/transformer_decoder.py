"""Masked-attention transformer decoder (Mask2Former's ``MultiScaleMaskedTransformerDecoder``, spec 2.3)
with the CSL heads: validity logits (valid / no-object) and region prototypes P whose dot product with
the per-pixel embeddings E gives the region logits.

Written without data-dependent Python control flow (every branch depends on shapes or on the config
only), so ``torch.jit.trace`` and ``torch.onnx.export`` record the whole computation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """DETR's sine encoding with ``normalize=True`` (no padding mask): ``num_pos_feats`` channels per
    axis, y first then x, coordinates scaled to (0, 2*pi]."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, x: Tensor) -> Tensor:
        """B x C x h x w -> B x 2*num_pos_feats x h x w (same dtype/device as x)."""
        b, _, h, w = x.shape
        eps = 1e-6
        # cumsum of ones without a mask = 1..h; normalised by the last row/column as in DETR.
        y_embed = torch.arange(1, h + 1, device=x.device, dtype=torch.float32)
        x_embed = torch.arange(1, w + 1, device=x.device, dtype=torch.float32)
        y_embed = y_embed / (y_embed[-1:] + eps) * self.scale
        x_embed = x_embed / (x_embed[-1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, device=x.device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = y_embed[:, None] / dim_t  # h x F
        pos_x = x_embed[:, None] / dim_t  # w x F
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat((pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=2)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1).to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Batch-first multi-head attention with an optional boolean mask (True = not allowed to attend),
    written with plain ops (Linear + scaled_dot_product_attention) so tracing and ONNX export see it."""

    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.nheads = nheads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.nheads, c // self.nheads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        bias = None
        if mask is not None:
            # B x Lq x Lk -> additive bias broadcast over heads. Fully masked rows were unmasked by the
            # caller, so no row is all -inf.
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
            bias = bias.unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention, post-norm: queries (+query_pos) attend to pixels (+pos)."""

    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.attn = MultiHeadAttention(dim, nheads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, memory: Tensor, mask: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        return self.norm(tgt + self.attn(tgt + query_pos, memory + pos, memory, mask))


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.attn = MultiHeadAttention(dim, nheads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.attn(q, q, tgt))


class FFNLayer(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (Mask2Former's ``mask_embed`` with 3 layers)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int):
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskedTransformerDecoder(nn.Module):
    """N learnable region queries refined by ``num_layers`` layers of masked cross-attention ->
    self-attention -> FFN, layer i attending to scale ``i % 3`` (1/32, 1/16, 1/8, 1/32, ...).

    Predictions (validity logits B x N x 2, region logits B x N x H/4 x W/4) are made from the input
    queries and after every layer: ``num_layers + 1`` in total, the last one being the output and the
    others the deep-supervision auxiliaries.
    """

    def __init__(self, in_channels: int, hidden_dim: int, mask_dim: int, num_queries: int, nheads: int,
                 dim_feedforward: int, num_layers: int, num_levels: int = 3):
        super().__init__()
        self.num_layers = num_layers
        self.num_levels = num_levels
        self.pe = PositionEmbeddingSine(hidden_dim // 2)
        self.cross_layers = nn.ModuleList(CrossAttentionLayer(hidden_dim, nheads) for _ in range(num_layers))
        self.self_layers = nn.ModuleList(SelfAttentionLayer(hidden_dim, nheads) for _ in range(num_layers))
        self.ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)   # learnable query features
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learnable query positions
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        # Identity when the pixel decoder already has the decoder's width (spec: ENFORCE_INPUT_PROJ False).
        self.input_proj = nn.ModuleList(
            nn.Identity() if in_channels == hidden_dim else nn.Conv2d(in_channels, hidden_dim, 1)
            for _ in range(num_levels))
        self.validity_embed = nn.Linear(hidden_dim, 2)  # [valid, no-object]
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Mask2Former: xavier-uniform for the attention/FFN matrices; c2_xavier for input projections.
        for layers in (self.cross_layers, self.self_layers, self.ffn_layers):
            for p in layers.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for attn in [layer.attn for layer in self.cross_layers] + [layer.attn for layer in self.self_layers]:
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                nn.init.zeros_(lin.bias)
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.zeros_(proj.bias)

    def prediction_heads(self, queries: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """queries B x N x C, E B x D x h x w -> validity logits B x N x 2, region logits B x N x h x w."""
        decoded = self.decoder_norm(queries)
        validity = self.validity_embed(decoded)
        prototypes = self.mask_embed(decoded)  # P: B x N x mask_dim
        region_logits = torch.einsum("bqc,bchw->bqhw", prototypes, embeddings)
        return validity, region_logits

    @staticmethod
    def attention_mask(region_logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Boolean B x N x (h*w): True where the query may NOT attend, i.e. sigmoid(resized logit) < 0.5,
        which is logit < 0. Rows masked everywhere are unmasked (Mask2Former), without Python branching."""
        if tuple(region_logits.shape[-2:]) != tuple(size):
            region_logits = F.interpolate(region_logits, size=size, mode="bilinear", align_corners=False)
        mask = (region_logits.flatten(2) < 0).detach()
        return mask & ~mask.all(dim=-1, keepdim=True)

    def forward(self, features: list[Tensor], embeddings: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """features: [f32, f16, f8] (B x C x h_l x w_l), embeddings E: B x mask_dim x H/4 x W/4.

        Returns (validity logits per prediction, region logits per prediction), each a list of
        ``num_layers + 1`` tensors, the final prediction last; in eval mode the final prediction only.
        """
        sources, positions, sizes = [], [], []
        for level, feature in enumerate(features):
            sizes.append((int(feature.shape[-2]), int(feature.shape[-1])))
            positions.append(self.pe(feature).flatten(2).transpose(1, 2))
            src = self.input_proj[level](feature).flatten(2) + self.level_embed.weight[level][None, :, None]
            sources.append(src.transpose(1, 2))
        b = embeddings.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)

        if not self.training:
            return self._inference(output, query_pos, sources, positions, sizes, embeddings)
        validity, region = self.prediction_heads(output, embeddings)
        all_validity, all_region = [validity], [region]
        for i in range(self.num_layers):
            level = i % self.num_levels
            mask = self.attention_mask(region, sizes[level])
            output = self.cross_layers[i](output, sources[level], mask, positions[level], query_pos)
            output = self.self_layers[i](output, query_pos)
            output = self.ffn_layers[i](output)
            validity, region = self.prediction_heads(output, embeddings)
            all_validity.append(validity)
            all_region.append(region)
        return all_validity, all_region

    def _inference(self, output: Tensor, query_pos: Tensor, sources: list[Tensor], positions: list[Tensor],
                   sizes: list[tuple[int, int]], embeddings: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The eval-mode forward: only the final prediction, at H/4 x W/4.

        The intermediate predictions only feed the attention masks, at the attended level's size, so
        they are made from E resized to that size: bilinear resizing is linear in each channel, so
        ``resize(P . E) = P . resize(E)`` (equal up to float rounding), and the N x H/4 x W/4 products
        that dominated the decoder's cost on CPU are made once instead of ``num_layers + 1`` times.
        """
        small = [F.interpolate(embeddings, size=size, mode="bilinear", align_corners=False) for size in sizes]
        for i in range(self.num_layers):
            level = i % self.num_levels
            _, region = self.prediction_heads(output, small[level])
            output = self.cross_layers[i](output, sources[level], self.attention_mask(region, sizes[level]),
                                          positions[level], query_pos)
            output = self.self_layers[i](output, query_pos)
            output = self.ffn_layers[i](output)
        validity, region = self.prediction_heads(output, embeddings)
        return [validity], [region]
