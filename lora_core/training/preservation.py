"""Keeping what the model knew: loss terms toward the same model's own prediction with the LoRA switched off.

    differential output preservation (DOP)  the step's latents at the step's noise and noise level, captioned
                                            with the preservation caption (the trigger replaced by a class word)
    blank-prompt preservation               the same with the empty caption
    regularisation toward the base          a regularisation dataset's batches, with their own captions
    regularisation toward its images        a regularisation dataset's batches, trained as data (DreamBooth)

A term toward the base is the native loss of the difference (objective.py: D is affine in the raw output):

    ||raw_theta - raw_0||^2 = ||D_theta(x_t, c) - D_0(x_t, c)||^2 / c_out(sigma)^2

with D_0 computed under no_grad with the adapters' multiplier at 0: the same layers, the same inputs, the
same batch, so with a zero LoRA (step 0) both forwards are the same arithmetic and the term is exactly 0.
The terms reuse the training term's x_t and sigma (no random draw is added, so the run's draws stay those of a
run without them) and are summed with it before the one backward of the micro-step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from ..data.dataset_mix import Regularisation
from ..data.samples import usable_in_autograd
from ..errors import TrainingError
from .backend import Backend
from .loss_options import LossOptions
from .objective import diffusion_loss, per_sample_loss

@dataclass(frozen=True)
class PreservationTerm:
    """One preservation loss: its name (dop, blank_prompt), multiplier, and the cond of each training sample."""

    name: str
    multiplier: float
    conds: Sequence[Any]  # indexed like the run's samples; None for samples the term does not cover
    settings: dict[str, Any] = field(default_factory=dict)  # what the metadata records (class word, ...)
    captions: Sequence[str] = ()  # the texts behind conds, for the resume fingerprint


@contextlib.contextmanager
def switched_off(attachment: Any) -> Iterator[None]:
    """The attached adapters at multiplier 0 (their hooks return the layer's own output) inside."""
    before = attachment.multiplier
    attachment.multiplier = 0.0
    try:
        yield
    finally:
        attachment.multiplier = before


def toward_base(backend: Backend, attachment: Any, x_t: torch.Tensor, sigma: torch.Tensor,
                conds: list[Any]) -> torch.Tensor:
    """Per-row ||D_theta(x_t, c) - D_0(x_t, c)||^2 / c_out^2, D_0 with the LoRA off and without grad. Shape (B,)."""
    with torch.no_grad(), switched_off(attachment):
        target = backend.denoise(x_t, sigma, conds)
    return per_sample_loss(backend.denoise(x_t, sigma, conds), target, backend.c_out(sigma))


class Preservation:
    """The run's preservation terms and regularisation roles: what a micro-batch's loss is beyond the data term.

    roles[i] is the Regularisation of sample i's dataset (None: a training sample). A batch comes from one
    dataset (data/mixed_order.py), so its first sample names the role of all of it.
    """

    def __init__(self, terms: Sequence[PreservationTerm] = (), roles: Sequence[Regularisation | None] | None = None):
        self.terms = [t for t in terms if t.multiplier != 0]
        self.roles = list(roles) if roles is not None else None
        for term in self.terms:
            if not term.multiplier > 0:
                raise TrainingError(f"the {term.name} multiplier must be >= 0, got {term.multiplier}")

    def usable_in_autograd(self) -> "Preservation":
        """The same terms with inference-mode tensors in their conds copied (ComfyUI encodes under inference_mode)."""
        terms = [PreservationTerm(t.name, t.multiplier, usable_in_autograd(list(t.conds)), t.settings, t.captions)
                 for t in self.terms]
        return Preservation(terms, self.roles)

    @property
    def active(self) -> bool:
        return bool(self.terms) or any(r is not None for r in self.roles or ())

    def check(self, n_samples: int, train_text_encoder: bool) -> None:
        for term in self.terms:
            if len(term.conds) != n_samples:
                raise TrainingError(f"{term.name}: {len(term.conds)} preservation conds for {n_samples} samples")
        if self.roles is not None and len(self.roles) != n_samples:
            raise TrainingError(f"{len(self.roles)} dataset roles for {n_samples} samples")
        toward = self.terms or any(r is not None and r.target == "base_prediction" for r in self.roles or ())
        if toward and train_text_encoder:
            raise TrainingError("preservation and regularisation toward the base model's prediction cannot be combined "
                                "with text-encoder training yet: the LoRA-off target would need every caption encoded "
                                "again without the text-encoder LoRA")

    def role(self, batch: list[int]) -> Regularisation | None:
        return self.roles[batch[0]] if self.roles is not None else None

    def loss(self, backend: Backend, attachment: Any, batch: list[int], x0: torch.Tensor, noise: torch.Tensor,
             u: torch.Tensor, conds: list[Any], options: LossOptions,
             masks: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss of one micro-batch: its data term (or regularisation term) plus the preservation terms.

        masks weight the terms toward images only: a mask says where a sample's image is learned, while a term
        toward the base keeps the model's behaviour over the whole image (the background most of all)."""
        role = self.role(batch)
        if role is not None and role.target == "base_prediction":
            sigma = backend.sigma_from_u(u)
            return role.weight * toward_base(backend, attachment, backend.noisy(x0, noise, sigma), sigma, conds)
        loss = diffusion_loss(backend, x0, noise, u, conds, options, masks)
        if role is not None:  # toward its images: a data term with the dataset's weight (DreamBooth prior loss)
            return role.weight * loss
        if not self.terms:
            return loss
        sigma = backend.sigma_from_u(u)
        x_t = backend.noisy(x0, noise, sigma)
        covered = [t for t in self.terms if all(t.conds[i] is not None for i in batch)]
        if not covered:
            return loss
        # every term in one LoRA-off and one LoRA-on forward: rows term by term, each at the step's x_t and sigma
        rows = len(batch)
        joint = toward_base(backend, attachment, x_t.repeat(len(covered), *[1] * (x_t.dim() - 1)),
                            sigma.repeat(len(covered)), [t.conds[i] for t in covered for i in batch])
        for k, term in enumerate(covered):
            loss = loss + term.multiplier * joint[k * rows:(k + 1) * rows].to(loss)
        return loss

    def settings(self) -> dict[str, Any]:
        """What ran, for the LoRA's metadata and the resume fingerprint (the captions as a hash)."""
        out: dict[str, Any] = {}
        for term in self.terms:
            digest = hashlib.sha256(json.dumps(list(term.captions)).encode()).hexdigest()
            out[term.name] = {"multiplier": term.multiplier, **term.settings, "captions_sha256": digest}
        if self.roles is not None and any(r is not None for r in self.roles):
            regs = sorted({(r.target, r.weight) for r in self.roles if r is not None})
            out["regularisation"] = [{"target": t, "weight": w,
                                      "samples": sum(1 for r in self.roles if r == Regularisation(t, w))}
                                     for t, w in regs]
        return out


def preservation_metadata(preservation: Preservation | None) -> dict[str, str]:
    """lora_lab_preservation (what ran and its settings) and kohya's ss_prior_loss_weight for image regularisation."""
    if preservation is None or not preservation.active:
        return {}
    settings = preservation.settings()
    for term in settings.values():
        if isinstance(term, dict):
            term.pop("captions_sha256", None)
    meta = {"lora_lab_preservation": json.dumps(settings, sort_keys=True)}
    images = {r["weight"] for r in settings.get("regularisation", []) if r["target"] == "images"}
    if len(images) == 1:
        meta["ss_prior_loss_weight"] = repr(float(images.pop()))
    return meta


def attach_fingerprint(fingerprint: dict[str, Any], preservation: Preservation | None) -> dict[str, Any]:
    """The run's fingerprint with the preservation settings in it (unchanged when there are none, so runs
    without preservation keep their states byte for byte)."""
    if preservation is None or not preservation.active:
        return fingerprint
    return {**fingerprint, "settings": {**fingerprint["settings"], "preservation": preservation.settings()}}

