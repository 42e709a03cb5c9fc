"""CRD: contrastive representation distillation (Tian et al., ICLR 2020).

Student and teacher embeddings pass through learnable linear heads and are L2-normalised.
Each student embedding must pick out its own teacher embedding among K negatives, and each
teacher embedding its own student embedding:
    L = ½·[CE(s·T⁺ / τ over {t_i} ∪ bank_t) + CE(t·S⁺ / τ over {s_i} ∪ bank_s)].
The negatives come from first-in-first-out memory banks of past embeddings, of configurable size
``bank_size`` (so small data sets work), rather than one slot per training image; the banks are
buffers, so they are checkpointed. Paper weight β = 0.8, τ = 0.07, embedding size 128.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod, embedding_dims, last_embedding
from daqkd.registry import KD_METHODS


def gathered(z: torch.Tensor) -> list[torch.Tensor]:
    """``z`` from every rank, in rank order (equal batch sizes, as DDP's samplers give)."""
    parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, z.contiguous())
    return parts


@KD_METHODS.register("crd")
class ContrastiveRepresentation(KDMethod):
    def __init__(self, student_shapes, teacher_shapes, embed_dim: int = 128, bank_size: int = 4096, temperature: float = 0.07):
        super().__init__()
        self.embed_s = nn.Linear(embedding_dims(student_shapes), embed_dim)
        self.embed_t = nn.Linear(embedding_dims(teacher_shapes), embed_dim)
        self.temperature = temperature
        self.register_buffer("bank_s", F.normalize(torch.randn(bank_size, embed_dim), dim=1))
        self.register_buffer("bank_t", F.normalize(torch.randn(bank_size, embed_dim), dim=1))
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))

    def _contrast(self, anchor, positives, bank):
        # A snapshot: the bank is updated in place right after, before backward runs.
        logits = torch.cat([anchor @ positives.T, anchor @ bank.clone().T], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t = last_embedding(batch)
        zs = F.normalize(self.embed_s(s), dim=1)
        zt = F.normalize(self.embed_t(t), dim=1)
        loss = 0.5 * (self._contrast(zs, zt, self.bank_t) + self._contrast(zt, zs, self.bank_s))
        if self.training:
            self._enqueue(zs.detach(), zt.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, zs, zt):
        # Under several processes every rank enqueues the whole global batch, in rank order, so the
        # banks (and the negatives they give) stay the same on every rank.
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            zs, zt = (torch.cat(gathered(z)) for z in (zs, zt))
        size = len(self.bank_s)
        zs, zt = zs[-size:], zt[-size:]  # a batch larger than the bank keeps its newest entries
        n = len(zs)
        idx = (self.bank_ptr + torch.arange(n, device=zs.device)) % size
        self.bank_s[idx] = zs
        self.bank_t[idx] = zt
        self.bank_ptr.copy_((self.bank_ptr + n) % size)
