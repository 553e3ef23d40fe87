"""FLAVA's pretraining objective: which terms run for which batch, and gradients."""

from __future__ import annotations

import pytest
import torch

from flava_zoo import create_model
from flava_zoo.models.pretraining import FlavaForPretraining, LossWeights


def make_batch(b=4, length=12, seed=0, with_image=True, with_text=True):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    if with_image:
        batch["pixel_values"] = torch.randn(b, 3, 64, 64, generator=g)
        batch["image_mask"] = torch.rand(b, 16, generator=g) < 0.4
    if with_text:
        ids = torch.randint(5, 1000, (b, length), generator=g)
        am = torch.ones_like(ids)
        am[0, length // 2 :] = 0
        ids[am == 0] = 0
        labels = torch.full_like(ids, -100)
        labels[:, 1:3] = ids[:, 1:3]
        masked = ids.clone()
        masked[:, 1:3] = 4
        batch.update(input_ids=ids, attention_mask=am, masked_input_ids=masked, mlm_labels=labels)
    return batch


def objective(fusion="merged", **kw):
    torch.manual_seed(0)
    return FlavaForPretraining(create_model("flava-tiny", fusion=fusion), **kw)


@pytest.mark.parametrize("mode", ["swap", "extra"])
@pytest.mark.parametrize("fusion", ["merged", "co_attention", "none"])
def test_pairs_compute_every_term_and_every_used_parameter_gets_a_gradient(fusion, mode):
    obj = objective(fusion, itm_hard_negatives=True, itm_negatives=mode)
    out = obj(make_batch())
    expected = {"contrastive", "mim", "mlm", "loss"}
    if fusion != "none":
        expected |= {"itm", "mmm_image", "mmm_text"}
    assert set(out.terms) == expected
    assert torch.isfinite(out.loss)
    out.loss.backward()
    no_grad = [n for n, p in obj.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    parts = sum(float(v) for k, v in out.terms.items() if k != "loss")
    assert abs(parts - float(out.loss.detach())) < 1e-4


@pytest.mark.parametrize("mode", ["swap", "extra"])
def test_itm_negatives_swap_half_the_pairs_or_run_a_second_fusion_pass(mode, monkeypatch):
    obj = objective(itm_negatives=mode)
    model = obj.model
    calls, itm_labels, mmm_rows = [], [], []
    fuse, itm_loss = model.fuse, __import__("flava_zoo.losses", fromlist=["itm_loss"]).itm_loss

    def spy_fuse(image, text):
        calls.append(text.last_hidden_state.detach().clone())
        return fuse(image, text)

    def spy_itm(logits, labels):
        itm_labels.append(labels)
        return itm_loss(logits, labels)

    monkeypatch.setattr(model, "fuse", spy_fuse)
    monkeypatch.setattr("flava_zoo.losses.itm_loss", spy_itm)
    obj.mmm_text_head.register_forward_hook(lambda mod, args, out: mmm_rows.append(args[0].shape[0]))
    b = 6
    batch = make_batch(b=b)  # every row has mlm labels at positions 1 and 2
    out = obj(batch)
    labels = itm_labels[0]
    if mode == "swap":
        assert len(calls) == 1 and labels.shape == (b,)
        assert int(labels.sum()) == b - b // 2  # half the pairs mismatched
        text = obj.model.encode_text(batch["masked_input_ids"], batch["attention_mask"]).last_hidden_state
        for row in range(b):  # matched rows keep their own text, swapped rows another one's
            same = torch.allclose(calls[0][row], text[row], atol=1e-5)
            assert same == bool(labels[row])
        assert mmm_rows == [2 * int(labels.sum())]  # MMM-text on the matched rows only
    else:
        assert len(calls) == 2 and labels.tolist() == [1] * b + [0] * b
        assert mmm_rows == [2 * b]
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="itm_negatives must be one of"):
        objective(itm_negatives="both")


def test_unimodal_batches_compute_only_their_term():
    obj = objective()
    assert set(obj(make_batch(with_text=False)).terms) == {"mim", "loss"}
    assert set(obj(make_batch(with_image=False)).terms) == {"mlm", "loss"}


def test_zero_weight_switches_a_term_off():
    obj = objective(weights={"itm": 0.0, "mmm_image": 0.0, "mmm_text": 0.0, "mim": 0.0, "mlm": 0.0})
    out = obj(make_batch())
    assert set(out.terms) == {"contrastive", "loss"}
    out.loss.backward()
    assert obj.model.fusion_encoder.cls_token.grad is None  # the fusion encoder never ran


def test_weights_scale_the_total():
    a = objective(weights=LossWeights(mim=0, mlm=0, itm=0, mmm_image=0, mmm_text=0, contrastive=1))
    b = objective(weights=LossWeights(mim=0, mlm=0, itm=0, mmm_image=0, mmm_text=0, contrastive=3))
    batch = make_batch()
    torch.testing.assert_close(3 * a(batch).loss, b(batch).loss)


def test_bad_weights_and_batches():
    with pytest.raises(ValueError, match="unknown loss weight"):
        objective(weights={"contrastve": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        LossWeights(itm=-1)
    with pytest.raises(ValueError, match="neither pixel_values nor input_ids"):
        objective()({"labels": torch.zeros(2)})
    with pytest.raises(ValueError, match="needs an image_tokenizer"):
        FlavaForPretraining(create_model("flava-tiny", mim_target="codebook"))


def test_codebook_targets_through_an_image_tokenizer():
    from flava_zoo.image_tokenizer import DalleEncoder, DalleImageTokenizer

    torch.manual_seed(0)
    encoder = DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=32)
    tokenizer = DalleImageTokenizer(encoder)
    obj = FlavaForPretraining(
        create_model("flava-tiny", mim_target="codebook", codebook_size=32),
        image_tokenizer=tokenizer,
    )
    out = obj(make_batch())
    assert {"mim", "mmm_image"} <= set(out.terms)
    out.loss.backward()
    assert obj.mim_head.decoder.weight.shape[0] == 32
