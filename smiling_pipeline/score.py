"""Score models: an epsilon-prediction MLP with its DDPM noise schedule and input normalisation.

A :class:`ScoreModel` is self-contained (schedule and normalisation statistics are buffers), so a
saved or MLflow-logged model is all the cost needs. Training is plain denoising score matching:
``E || eps_theta(x_t, t) - eps ||^2`` with ``t`` uniform over the informative range (see
:func:`informative_steps`), the range the cost estimator later samples.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np
import torch
from torch import nn

from smiling_pipeline.config import ScoreConfig, as_dict
from smiling_pipeline.errors import DataError, UserError

# Where bfloat16 pays (docs/performance.md): from input dimension 32 (below, fitting under autocast is
# slower and converting the reward's activations costs what the narrower output layer saves) and, in
# the reward, from about 4M multiply-adds per chunk (below, the narrower matmul's fixed cost dominates).
NARROW_MIN_DIM = 32
NARROW_MIN_MACS = 1 << 22


def alphas_bar(cfg: ScoreConfig) -> torch.Tensor:
    """Cumulative signal fractions ``abar_t`` for t = 0..T-1 (linear betas as in DDPM, or cosine)."""
    T = cfg.num_timesteps
    if cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1.0 - betas, dim=0)


def informative_steps(cfg: ScoreConfig) -> int:
    """Number of leading timesteps with ``sqrt(abar_t) >= min_signal``; beyond them x_t is pure noise.

    With the paper's T = 5000 linear schedule this is 2,123: the official estimator spends the
    other 58 % of its grid where neither score model can tell states apart.
    """
    signal = alphas_bar(cfg).sqrt()
    return max(1, int((signal >= cfg.min_signal).sum()))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (as in DDPM / diffusers)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


@dataclass(frozen=True)
class GridTerms:
    """What :meth:`ScoreModel.grid_errors` needs of K (timestep, noise) draws for one model's weights."""

    signal: torch.Tensor  # (K,) sqrt(abar_t)
    first: torch.Tensor  # (K, H) first-layer pre-activation of the draw's noise, time embedding and bias
    offset: torch.Tensor  # (d, K, 1) output bias minus the draw's noise
    weight: torch.Tensor  # (d, H) output-layer weight in the dtype its matmul runs in


class ScoreModel(nn.Module):
    """``eps_theta(x_t, t)`` for normalised inputs, with the schedule and normalisation as buffers.

    Architecture (the official one by default): time embedding -> Linear(e, 2e) -> act ->
    Linear(2e, e); concatenated with x_t -> ``depth`` x [Linear(., hidden) -> act] -> Linear(., d).
    ``linear=True`` removes every activation (the paper's ablation).
    """

    mean: torch.Tensor  # buffers: input normalisation and the noise schedule
    std: torch.Tensor
    sqrt_ab: torch.Tensor
    sqrt_1mab: torch.Tensor

    def __init__(self, dim: int, cfg: ScoreConfig, mean: Optional[np.ndarray] = None, std: Optional[np.ndarray] = None):
        super().__init__()
        if dim < 1:
            raise UserError(f"score model input dimension must be positive, got {dim}")
        self.dim = dim
        self.cfg = cfg
        act: Callable[[], nn.Module] = nn.Identity if cfg.linear else (lambda: nn.LeakyReLU())
        e = cfg.time_embed
        self.time_mlp = nn.Sequential(nn.Linear(e, 2 * e), act(), nn.Linear(2 * e, e))
        layers: list[nn.Module] = []
        width = dim + e
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.hidden), act()]
            width = cfg.hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)
        use_stats = cfg.normalize and mean is not None and std is not None
        self.register_buffer("mean", torch.as_tensor(mean if use_stats else np.zeros(dim), dtype=torch.float32))
        scale = np.maximum(std, cfg.min_std) if use_stats and std is not None else np.ones(dim)
        self.register_buffer("std", torch.as_tensor(scale, dtype=torch.float32))
        abar = alphas_bar(cfg)
        self.register_buffer("sqrt_ab", abar.sqrt().float())
        self.register_buffer("sqrt_1mab", (1 - abar).sqrt().float())
        self.t_max = informative_steps(cfg)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise for normalised noisy inputs ``x_t`` at integer timesteps ``t``."""
        temb = self.time_mlp(timestep_embedding(t, self.cfg.time_embed))
        return self.net(torch.cat([x_t, temb], dim=-1))

    @property
    def _first(self) -> nn.Linear:
        return cast(nn.Linear, self.net[0])

    @property
    def _last(self) -> nn.Linear:
        return cast(nn.Linear, self.net[-1])

    @torch.inference_mode()
    def grid_terms(self, t: torch.Tensor, eps: torch.Tensor, dtype: torch.dtype = torch.float32) -> GridTerms:
        """The per-draw parts of :meth:`grid_errors` for timesteps ``t`` (K,) and noise ``eps`` (K, d):
        they depend only on the draws and the weights, so a caller that keeps both can reuse them.
        ``dtype``: what the output layer's matmul runs in (bfloat16 where it is native pays)."""
        first = self._first
        wx, wt = first.weight[:, : self.dim], first.weight[:, self.dim :]
        temb = self.time_mlp(timestep_embedding(t, self.cfg.time_embed))
        per_t = (self.sqrt_1mab[t, None] * eps) @ wx.T + temb @ wt.T + first.bias
        return GridTerms(self.sqrt_ab[t], per_t, (self._last.bias - eps).T[:, :, None], self._last.weight.to(dtype))

    @torch.inference_mode()
    def grid_errors(self, x0: torch.Tensor, terms: GridTerms, chunk_bytes: int = 2 << 20) -> torch.Tensor:
        """Per row b of ``x0``: sum over the K draws (t_j, eps_j) of ``terms`` of mean_d (eps_theta(x_t, t_j) - eps_j)^2,
        x_t = diffuse(x0_b, t_j, eps_j).

        Because x_t is linear in (x0, eps), the first layer's pre-activation is sqrt(abar_j) (W_x x0_b)
        + [sqrt(1 - abar_j) W_x eps_j + W_t emb(t_j) + bias]: a (B, H) product and the (K, H) terms,
        then one multiply-add per (j, b) pair. Only the later layers run on all B*K pairs, in chunks
        of about ``chunk_bytes`` of activations written into buffers that every chunk reuses (fresh
        multi-MB tensors per chunk cost page faults). The output layer's matmul
        runs in the dtype of ``terms.weight`` where that pays (``NARROW_MIN_DIM``, ``NARROW_MIN_MACS``);
        everything else in float32. Inference only.
        """
        per_row = x0 @ self._first.weight[:, : self.dim].T  # (B, H)
        (n, width), k = per_row.shape, len(terms.signal)
        pairs = max(1, chunk_bytes // (4 * (width + self.dim)))
        rows = max(1, min(n, pairs))
        step = max(1, pairs // rows)
        low = (terms.weight.dtype != x0.dtype and self.dim >= NARROW_MIN_DIM
               and min(n * k, pairs) * width * self.dim >= NARROW_MIN_MACS)
        weight = terms.weight if low else self._last.weight
        hidden = x0.new_empty(step * rows * width)
        narrow = x0.new_empty(step * rows * width, dtype=weight.dtype) if low else None
        product = x0.new_empty(step * rows * self.dim, dtype=weight.dtype)
        residual = x0.new_empty(step * rows * self.dim) if low else product
        out = torch.zeros(n, device=x0.device)
        for r in range(0, n, rows):
            block = per_row[r : r + rows]
            for i in range(0, k, step):
                j = slice(i, i + step)
                m, b = len(terms.signal[j]), len(block)
                h = torch.addcmul(terms.first[j, None, :], terms.signal[j, None, None], block[None],
                                  out=hidden[: m * b * width].view(m, b, width)).view(m * b, width)
                h = self._hidden_layers(h)
                if narrow is not None:
                    h = narrow[: m * b * width].view(m * b, width).copy_(h)
                # transposed, (d, pairs) = W (H, pairs): faster than (pairs, H) W^T for small d
                e = torch.matmul(weight, h.T, out=product[: m * b * self.dim].view(self.dim, -1))
                e = torch.add(e.view(self.dim, m, b), terms.offset[:, j], out=residual[: m * b * self.dim].view(self.dim, m, b))
                out[r : r + b] += e.square_().sum(dim=0).sum(dim=0)
        return out / self.dim

    @torch.inference_mode()
    def time_terms(self, t: torch.Tensor) -> torch.Tensor:
        """The first layer's timestep part, ``W_t emb(t) + bias``, for timesteps ``t`` (K,): (K, H)."""
        temb = self.time_mlp(timestep_embedding(t, self.cfg.time_embed))
        return temb @ self._first.weight[:, self.dim :].T + self._first.bias

    @torch.inference_mode()
    def cycled_errors(self, x_t: torch.Tensor, eps: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
        """mean_d (eps_theta(x_t, t) - eps)^2 per row, for rows whose timesteps cycle through the K of ``terms``
        (:meth:`time_terms`): row i at the timestep of ``terms[i % K]``, ``len(x_t)`` a multiple of K.

        The same numbers as :meth:`forward` (up to float rounding) without the per-row time embedding and
        concatenation: the time part of the first layer is added once per K rows by broadcasting, the output
        layer runs transposed, (d, rows) = W (H, rows), which is faster for small d. Inference only.
        """
        k, width = terms.shape
        h = (x_t @ self._first.weight[:, : self.dim].T).view(-1, k, width).add_(terms).view(-1, width)
        h = self._hidden_layers(h)
        e = torch.matmul(self._last.weight, h.T).add_(self._last.bias[:, None]).sub_(eps.T)
        return e.square_().mean(0)

    def _hidden_layers(self, h: torch.Tensor) -> torch.Tensor:
        """``net`` between the first and the output layer, activations applied in place (inference only)."""
        for layer in list(self.net)[1:-1]:
            if isinstance(layer, nn.LeakyReLU):
                nn.functional.leaky_relu_(h, layer.negative_slope)
            elif not isinstance(layer, nn.Identity):
                h = layer(h)
        return h

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs (any float dtype, any device) -> the normalised space the model diffuses."""
        return (x.to(self.mean) - self.mean) / self.std

    def diffuse(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (normalised x_0)."""
        return self.sqrt_ab[t, None] * x0 + self.sqrt_1mab[t, None] * eps

    def loss(self, x_raw: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Denoising score-matching loss (mean over batch and dimensions), t uniform on the informative range."""
        x0 = self.normalize(x_raw)
        t = torch.randint(0, self.t_max, (len(x0),), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator)
        return ((self(self.diffuse(x0, t, eps), t) - eps) ** 2).mean()

    def fresh_copy(self) -> ScoreModel:
        """Same architecture and statistics, new weights (e.g. the learner model at the start)."""
        copy = ScoreModel(self.dim, self.cfg).to(self.mean.device)
        copy.mean.copy_(self.mean)
        copy.std.copy_(self.std)
        return copy


@dataclass
class FitHistory:
    """Loss curves of a fit (step -> value)."""

    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class FitSettings:
    """Optimisation settings of one fit (pretraining, or one learner refit)."""

    steps: int
    batch_size: int = 1_024
    lr: float = 5e-3
    weight_decay: float = 0.01
    eval_every: int = 100
    dtype: torch.dtype = torch.float32  # bfloat16: forward passes under autocast, for d >= NARROW_MIN_DIM


def _check_rows(x: np.ndarray, what: str) -> None:
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{what} must be a non-empty 2-D array (rows x features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{what} holds NaN or inf values")


@torch.no_grad()
def evaluate_loss(model: ScoreModel, x: torch.Tensor, seed: int = 0, batch: int = 8_192) -> float:
    """Denoising loss on ``x`` with a fixed noise draw (comparable across calls)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    total = 0.0
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        total += float(model.loss(chunk, generator=g)) * len(chunk)
    return total / len(x)


def fit(
    model: ScoreModel,
    x: np.ndarray | torch.Tensor,
    settings: FitSettings,
    seed: int = 0,
    val: Optional[np.ndarray] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    on_eval: Optional[Callable[[int, float, Optional[float]], None]] = None,
    progress: bool = False,
) -> tuple[torch.optim.Optimizer, FitHistory]:
    """Train ``model`` in place on rows ``x`` (minibatches sampled with replacement); returns the optimizer.
    Validation losses are computed in float32 whatever ``settings.dtype``, so they compare across precisions."""
    from tqdm.auto import tqdm

    device = model.mean.device
    data = torch.as_tensor(x, dtype=torch.float32, device=device)
    _check_rows(data.cpu().numpy() if data.numel() < 10_000_000 else data[:1000].cpu().numpy(), "training data")
    if data.shape[1] != model.dim:
        raise DataError(f"training data has {data.shape[1]} features but the score model expects {model.dim}")
    val_t = torch.as_tensor(val, dtype=torch.float32, device=device) if val is not None and len(val) else None
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    g = torch.Generator(device=device).manual_seed(seed)
    narrow = settings.dtype != torch.float32 and model.dim >= NARROW_MIN_DIM
    history = FitHistory()
    model.train()
    running = 0.0
    bar = tqdm(range(1, settings.steps + 1), desc="score model", unit="step", disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(0, len(data), (min(settings.batch_size, len(data)),), device=device, generator=g)
        with torch.autocast(device.type, dtype=settings.dtype, enabled=narrow):
            loss = model.loss(data[idx], generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item()
        if step % settings.eval_every == 0 or step == settings.steps:
            n = settings.eval_every if step % settings.eval_every == 0 else step % settings.eval_every
            train_loss = running / n
            running = 0.0
            val_loss = evaluate_loss(model, val_t) if val_t is not None else None
            history.train.append((step, train_loss))
            if val_loss is not None:
                history.val.append((step, val_loss))
            bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}" if val_loss is not None else "-")
            if on_eval:
                on_eval(step, train_loss, val_loss)
    model.eval()
    return opt, history


def fit_score_model(
    x: np.ndarray,
    cfg: ScoreConfig = ScoreConfig(),
    steps: int = 4_000,
    batch_size: int = 1_024,
    lr: float = 5e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    val: Optional[np.ndarray] = None,
    like: Optional[ScoreModel] = None,
) -> ScoreModel:
    """Public API: fit a score model on the rows of ``x``, normalised with their own statistics, or with
    those of ``like`` (its config too): a learner model for :func:`cost.reward` must share the expert's."""
    x = np.asarray(x, dtype=np.float32)
    _check_rows(x, "x")
    torch.manual_seed(seed)
    if like is not None:
        if like.dim != x.shape[1]:
            raise DataError(f"x has {x.shape[1]} columns but the model given as like= has dim {like.dim}")
        model = like.fresh_copy().to(device)
    else:
        model = ScoreModel(x.shape[1], cfg, x.mean(0), x.std(0)).to(device)
    fit(model, x, FitSettings(steps=steps, batch_size=batch_size, lr=lr), seed=seed, val=val)
    return model


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, shapes, values): which model it is."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model(model: ScoreModel, path: Path, extra: Optional[dict[str, Any]] = None) -> None:
    """Weights, statistics and config in one file (written atomically)."""
    from smiling_pipeline.io import atomic_file

    with atomic_file(path) as tmp:
        torch.save({"dim": model.dim, "config": as_dict(model.cfg), "state_dict": model.state_dict(),
                    "extra": extra or {}}, tmp)


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[ScoreModel, dict[str, Any]]:
    """Inverse of :func:`save_model`: the model and its ``extra`` record; corrupted or foreign files are user errors."""
    from smiling_pipeline.config import params_from_dict

    if not Path(path).is_file():
        raise UserError(f"score model {path} not found; run `smiling-cli pretrain` first")
    try:
        blob = torch.load(path, map_location=device, weights_only=False)
        cfg = params_from_dict({"score": blob["config"]}, "its settings").score
        model = ScoreModel(int(blob["dim"]), cfg).to(device)
        model.load_state_dict(blob["state_dict"])
    except UserError as e:
        raise UserError(f"score model {path} was written by another version of smiling_pipeline ({e}); "
                        "run pretrain again") from None
    except Exception as e:
        raise UserError(f"score model {path} is unreadable ({e.__class__.__name__}); run pretrain again") from e
    model.eval()
    return model, blob.get("extra", {})
