"""Differential output preservation, blank-prompt preservation and regularisation toward the base model, on a tiny
real UNet2DConditionModel (CPU): the terms' properties, measured on the training loop itself."""

import pytest
import torch

from lora_lab.lora_core.adapters.injection import attached
from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
from lora_lab.lora_core.cli.tiny_models import TinyTextEncoder, tiny_unet
from lora_lab.lora_core.data.dataset_mix import Regularisation
from lora_lab.lora_core.data.preservation_captions import dop_captions, preservation_caption
from lora_lab.lora_core.data.samples import TrainSample
from lora_lab.lora_core.errors import DatasetError, TrainingError
from lora_lab.lora_core.training.preservation import (Preservation, PreservationTerm, preservation_metadata,
                                                      toward_base)
from lora_lab.lora_core.training.run_setup import make_adapters
from lora_lab.lora_core.training.state import load_train_state, save_train_state
from lora_lab.lora_core.training.trainer import TrainConfig, train

TE = TinyTextEncoder()
CAPTIONS = ["sks dog on grass", "a photo of sks dog", "sks dog, sitting", "close-up of sks dog"]


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False)


def cond(text):
    return {"encoder_hidden_states": TE(text)}


def samples(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [TrainSample(torch.randn(4, 8, 8, generator=g), cond(c), c) for c in CAPTIONS]


def dop(multiplier=1.0, class_word="dog"):
    texts, _ = dop_captions(CAPTIONS, "sks", class_word)
    return PreservationTerm("dop", multiplier, [cond(t) for t in texts], {"class_word": class_word}, texts)


def blank(multiplier=1.0):
    return PreservationTerm("blank_prompt", multiplier, [cond("")] * len(CAPTIONS), {}, [""] * len(CAPTIONS))


def config(**kw):
    return TrainConfig(**{**dict(steps=3, learning_rate=1e-3, rank=4, alpha=4.0, targets="attention_mlp", seed=0), **kw})


def same_lora(a, b):
    return a.modules.keys() == b.modules.keys() and all(
        torch.equal(getattr(a.modules[n], f), getattr(b.modules[n], f)) for n in a.modules for f in ("down", "up"))


def test_preservation_caption_replaces_the_trigger_as_a_whole_word():
    assert preservation_caption("sks dog, sks on grass", "sks", "a") == "a dog, a on grass"
    assert preservation_caption("SKS dog, sksx", "sks", "person") == "person dog, sksx"
    assert preservation_caption("sks, a dog", "sks", "") == "a dog"
    texts, warnings = dop_captions(["sks dog", "a cat"], "sks", "dog")
    assert texts == ["dog dog", "a cat"] and "1 caption without the trigger word 'sks'" in warnings[0]
    with pytest.raises(DatasetError, match="trigger_word"):
        dop_captions(["a dog"], "", "dog")


def test_the_preservation_term_is_exactly_zero_while_the_lora_is(unet):
    backend = DDPMUNetBackend(unet)
    adapters = make_adapters(backend, config(), torch.Generator().manual_seed(0))  # fresh: up = 0
    x_t, sigma = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3)), backend.sigmas[[100, 300, 500, 900]]
    with attached(backend.root, adapters) as attachment:
        term = toward_base(backend, attachment, x_t, sigma, dop().conds)
    assert term.shape == (4,) and torch.equal(term, torch.zeros(4))
    # ... so a first step with DOP and blank-prompt preservation is the first step without them, bit for bit
    plain = train(backend, samples(), config(steps=1))
    kept = train(backend, samples(), config(steps=1), preservation=Preservation([dop(), blank()]))
    assert kept.losses == plain.losses and same_lora(kept.lora, plain.lora)
    # and not after it: the LoRA has moved, so the second step's loss differs
    plain2 = train(backend, samples(), config(steps=2))
    kept2 = train(backend, samples(), config(steps=2), preservation=Preservation([dop()]))
    assert kept2.losses[0] == plain2.losses[0] and kept2.losses[1] != plain2.losses[1]


class TargetRecorder(DDPMUNetBackend):
    """Keeps every prediction made without grad (the LoRA-off targets) with its inputs."""

    def __init__(self, unet):
        super().__init__(unet)
        self.targets = []

    def denoise(self, x_t, sigma, conds):
        out = super().denoise(x_t, sigma, conds)
        if not torch.is_grad_enabled():
            self.targets.append((x_t.clone(), sigma.clone(), list(conds), out.clone()))
        return out


def test_the_target_is_the_models_own_prediction_without_the_lora(unet):
    backend = TargetRecorder(unet)
    result = train(backend, samples(), config(steps=4, learning_rate=1e-2), preservation=Preservation([dop()]))
    assert len(backend.targets) == 4  # one LoRA-off forward per step
    x_t, sigma, conds, target = backend.targets[-1]  # made with the LoRA of step 3 attached (but off)
    with torch.no_grad():
        base = DDPMUNetBackend(unet).denoise(x_t, sigma, conds)  # the MODEL, no adapter anywhere
        modules = dict(unet.named_modules())
        from lora_lab.lora_core.adapters.algorithms import adapter_from_weights
        adapters = {n: adapter_from_weights(modules[n], w) for n, w in result.lora.modules.items()}
        with attached(unet, adapters):
            with_lora = DDPMUNetBackend(unet).denoise(x_t, sigma, conds)
    error, effect = float((target - base).abs().max()), float((with_lora - base).abs().max())
    print(f"target vs base model: {error:.3g}; LoRA's effect on the same input: {effect:.3g}")
    assert effect > 1e-4 and error <= effect * 1e-3


def output_shift(unet, lora, texts, n=4):
    """RMS of D_lora - D_base over fixed noisy inputs with the given captions (the preservation prompts)."""
    from lora_lab.lora_core.adapters.algorithms import adapter_from_weights

    backend, g = DDPMUNetBackend(unet), torch.Generator().manual_seed(99)
    modules = dict(unet.named_modules())
    adapters = {name: adapter_from_weights(modules[name], w) for name, w in lora.modules.items()}
    x0 = torch.stack([s.latent for s in samples()])
    total = 0.0
    with torch.no_grad():
        for level in (100, 400, 700):
            sigma = backend.sigmas[[level] * len(texts)]
            x_t = backend.noisy(x0, torch.randn(x0.shape, generator=g), sigma)
            conds = [cond(t) for t in texts]
            base = backend.denoise(x_t, sigma, conds)
            with attached(unet, adapters):
                shifted = backend.denoise(x_t, sigma, conds)
            total += float((shifted - base).pow(2).mean())
    return (total / 3) ** 0.5


def test_with_dop_the_preservation_prompt_moves_less_from_the_base(unet):
    backend, cfg = DDPMUNetBackend(unet), config(steps=40, learning_rate=5e-3, rank=8, alpha=8.0, batch_size=2)
    texts = dop().captions
    without = train(backend, samples(), cfg)
    with_dop = train(backend, samples(), cfg, preservation=Preservation([dop(multiplier=1.0)]))
    free, kept = output_shift(unet, without.lora, texts), output_shift(unet, with_dop.lora, texts)
    print(f"RMS shift of the output on the preservation prompts after 40 steps: without DOP {free:.4g}, with DOP {kept:.4g}")
    assert kept < 0.8 * free


def test_regularisation_toward_the_base_and_toward_its_images(unet):
    backend = DDPMUNetBackend(unet)
    data = samples()
    roles = [None, None, Regularisation("base_prediction", 0.5), Regularisation("images", 2.0)]
    prior = Preservation(roles=roles)
    adapters = make_adapters(backend, config(), torch.Generator().manual_seed(0))
    x0 = torch.stack([data[i].latent for i in (2,)])
    noise, u = torch.randn_like(x0), torch.tensor([0.5])
    with attached(backend.root, adapters) as attachment:
        reg = prior.loss(backend, attachment, [2], x0, noise, u, [data[2].cond], config().loss)
        images = prior.loss(backend, attachment, [3], x0, noise, u, [data[3].cond], config().loss)
        plain = Preservation().loss(backend, attachment, [3], x0, noise, u, [data[3].cond], config().loss)
    assert torch.equal(reg, torch.zeros(1))  # toward the base with a zero LoRA: nothing to learn yet
    assert torch.equal(images, 2.0 * plain) and float(plain) > 0
    settings = prior.settings()["regularisation"]
    assert settings == [{"target": "base_prediction", "weight": 0.5, "samples": 1},
                        {"target": "images", "weight": 2.0, "samples": 1}]
    meta = preservation_metadata(prior)
    assert meta["ss_prior_loss_weight"] == "2.0" and "base_prediction" in meta["lora_lab_preservation"]


def test_metadata_records_what_ran():
    meta = preservation_metadata(Preservation([dop(0.5, "dog"), blank(0.25)]))
    import json

    ran = json.loads(meta["lora_lab_preservation"])
    assert ran == {"dop": {"multiplier": 0.5, "class_word": "dog"}, "blank_prompt": {"multiplier": 0.25}}
    assert preservation_metadata(None) == {} and preservation_metadata(Preservation([dop(0.0)])) == {}


def test_resume_with_preservation_is_exact_and_checks_its_settings(unet, tmp_path):
    backend = DDPMUNetBackend(unet)
    keep = Preservation([dop(), blank(0.5)])
    whole = train(backend, samples(), config(steps=4), preservation=keep)
    first = train(backend, samples(), config(steps=2), preservation=keep)
    path = save_train_state(tmp_path / "dop.state", first.state)
    resumed = train(backend, samples(), config(steps=4), preservation=keep, resume=load_train_state(path))
    assert resumed.losses == whole.losses and same_lora(resumed.lora, whole.lora)
    with pytest.raises(TrainingError, match="preservation"):
        train(backend, samples(), config(steps=4), preservation=Preservation([dop(2.0)]), resume=load_train_state(path))
    with pytest.raises(TrainingError, match="preservation"):
        train(backend, samples(), config(steps=4), resume=load_train_state(path))
    plain = train(backend, samples(), config(steps=1))
    assert "preservation" not in plain.state.fingerprint["settings"]  # runs without it keep their states' bytes


def test_refused_with_text_encoder_training_and_mismatched_conds(unet):
    backend = DDPMUNetBackend(unet)
    with pytest.raises(TrainingError, match="text-encoder training"):
        backend.text_encoders = {"te1": torch.nn.Linear(2, 2)}
        try:
            train(backend, samples(), config(train_text_encoder=True), preservation=Preservation([dop()]))
        finally:
            del backend.text_encoders
    short = PreservationTerm("dop", 1.0, [cond("dog")], {}, ["dog"])
    with pytest.raises(TrainingError, match="1 preservation conds for 4 samples"):
        train(backend, samples(), config(), preservation=Preservation([short]))


def test_a_mask_weights_the_data_term_and_not_the_preservation_terms(unet):
    backend = DDPMUNetBackend(unet)
    lora = train(backend, samples(), config(steps=2)).lora  # a LoRA that is not zero, so DOP's term is not either
    g = torch.Generator().manual_seed(5)
    x0, noise, u = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g), torch.rand(4, generator=g)
    conds, zero = [s.cond for s in samples()], torch.zeros(4, 8, 8)
    adapters = make_adapters(backend, config(init_lora=lora), torch.Generator().manual_seed(0))
    with torch.no_grad(), attached(backend.root, adapters) as attachment:
        def loss(terms, masks, role=None):
            kept = Preservation(terms, [role] * 4 if role else None)
            return kept.loss(backend, attachment, [0, 1, 2, 3], x0, noise, u, conds, config().loss, masks)

        sigma = backend.sigma_from_u(u)
        dop_only = dop().multiplier * toward_base(backend, attachment, backend.noisy(x0, noise, sigma), sigma,
                                                  dop().conds)
        assert torch.equal(loss([], zero), torch.zeros(4)) and not torch.equal(loss([], None), torch.zeros(4))
        assert torch.equal(loss([dop()], torch.ones(4, 8, 8)), loss([dop()], None))  # all ones = no mask
        assert dop_only.abs().min() > 0 and torch.allclose(loss([dop()], zero), dop_only, rtol=1e-5, atol=0)
        images, base = Regularisation("images", 0.5), Regularisation("base_prediction", 0.5)
        assert torch.equal(loss([], zero, images), torch.zeros(4))  # toward its images: a data term, masked
        assert torch.equal(loss([], zero, base), loss([], None, base)) and loss([], None, base).abs().min() > 0
