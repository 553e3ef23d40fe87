"""Pretraining heads converted from transformers' FLAVA (and torchmultimodal's) reproduce the
source's MIM, MLM, ITM and MMM logits to 1e-5, end to end.

A tiny ``FlavaForPreTraining`` with seeded random weights, every parameter moved off its
init, is saved in the official layout (``save_pretrained``'s ``model.safetensors``, and the
``pytorch_model.bin`` of facebook/flava-full, which holds each tied decoder bias twice),
converted into a flava-zoo export folder, and loaded back the way users load one:
``FlavaPretrainModule(model=..., init_from=..., codebook_path=...)``. One masked batch goes
through both; ours is read off the heads of our own pretraining objective's forward pass.
Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

transformers = pytest.importorskip("transformers")

from flava_zoo import FlavaConfig, create_model  # noqa: E402
from flava_zoo.checkpoint import HEADS_NAME, load_head_state, read_config  # noqa: E402
from flava_zoo.config import FusionEncoderConfig, ImageEncoderConfig, TextEncoderConfig  # noqa: E402
from flava_zoo.downstream.base import load_itm_head  # noqa: E402
from flava_zoo.image_tokenizer import DalleImageTokenizer  # noqa: E402
from flava_zoo.interop import (  # noqa: E402
    CODEBOOK_NAME,
    config_from_transformers,
    convert_transformers_flava_checkpoint,
    convert_transformers_flava_heads,
    convert_transformers_flava_state_dict,
)
from flava_zoo.interop.heads import MASKED_HEADS, expected_head_shapes  # noqa: E402
from flava_zoo.zoo.convert import (  # noqa: E402
    TORCHMULTIMODAL_HEAD_EPS,
    export_torchmultimodal_flava,
    torchmultimodal_heads_to_transformers,
)

TOL = 1e-5
D, IMAGE, PATCH, IMAGE_VOCAB, TEXT_VOCAB = 48, 32, 8, 64, 200
GRID = IMAGE // PATCH
N = GRID * GRID
MASK_ID = 3
TERMS = ("mim", "mlm", "itm", "mmm_image", "mmm_text")
ROOT = Path(__file__).resolve().parents[1]


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


def hf_config(image_hidden: int = D, **overrides):
    """Every width equal (transformers applies its MMM heads, built at the towers' widths, to
    the fusion encoder's states); depths and MLP sizes differ per encoder."""
    return transformers.FlavaConfig(
        image_config=dict(
            image_size=IMAGE,
            patch_size=PATCH,
            hidden_size=image_hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            vocab_size=IMAGE_VOCAB,
        ),
        text_config=dict(
            vocab_size=TEXT_VOCAB,
            max_position_embeddings=32,
            hidden_size=D,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=80,
        ),
        multimodal_config=dict(
            hidden_size=D, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        ),
        hidden_size=D,
        projection_dim=32,
        image_codebook_config=dict(
            hidden_size=8, num_groups=4, num_blocks_per_group=1, vocab_size=IMAGE_VOCAB
        ),
        **{"init_codebook": True, **overrides},
    )


@torch.no_grad()
def perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = transformers.FlavaForPreTraining(hf_config()).eval()
    perturb(model, seed=1)
    return model


def save_official(model, folder: Path, layout: str) -> Path:
    """``save_pretrained``'s files, or facebook/flava-full's: a ``torch.save``-d state dict
    (each tied bias under both names) beside ``config.json``."""
    if layout == "safetensors":
        model.save_pretrained(folder)
        assert (folder / "model.safetensors").is_file()
    else:
        folder.mkdir(parents=True)
        state = model.state_dict()
        assert "mlm_head.bias" in state and "mlm_head.decoder.bias" in state
        torch.save(state, folder / "pytorch_model.bin")
        model.config.to_json_file(folder / "config.json")
    return folder


@pytest.fixture(scope="module", params=["safetensors", "pytorch_model.bin"])
def export(request, hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"hf-{request.param.replace('.', '-')}")
    folder = save_official(hf_model, root / "official", request.param)
    return convert_transformers_flava_checkpoint(folder, root / "export")


def masked_batch(seed: int = 0, padded: bool = True) -> dict[str, torch.Tensor]:
    """Four pairs; about 40% of the patches and 30% of the real tokens masked (at least one
    of each per row); text of 10, 8, 6 and 4 tokens (padded) or all 10."""
    g = torch.Generator().manual_seed(seed)
    b, length = 4, 10
    pixel_values = torch.rand(b, 3, IMAGE, IMAGE, generator=g)
    lengths = torch.tensor([10, 8, 6, 4] if padded else [10] * 4)
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    input_ids = torch.randint(5, TEXT_VOCAB, (b, length), generator=g) * attention_mask
    image_mask = torch.rand(b, N, generator=g) < 0.4
    image_mask[:, 0] = True
    selected = (torch.rand(b, length, generator=g) < 0.3) & attention_mask.bool()
    selected[:, 0] = False  # the class token stays
    selected[:, 1] = True
    return {
        "pixel_values": pixel_values,
        "image_mask": image_mask,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "masked_input_ids": input_ids.masked_fill(selected, MASK_ID),
        "mlm_labels": input_ids.masked_fill(~selected, -100),
        "mim_labels": torch.randint(0, IMAGE_VOCAB, (b, N), generator=g),
    }


def pretrain_module(export: Path):
    """Our objective, loaded as a user would from the converted folder."""
    from flava_zoo.training import FlavaPretrainModule

    module = FlavaPretrainModule(
        model=str(export),
        init_from=str(export),
        codebook_path=str(export / CODEBOOK_NAME),
        stage="multimodal",
        loss_weights={"mim": 1.0, "mlm": 1.0},
        itm_negatives="extra",  # ITM's first B rows are the batch's own (matched) pairs
    )
    return module.objective.eval()


@torch.no_grad()
def our_logits(objective, batch) -> dict[str, torch.Tensor]:
    """Every head's output in one forward pass of our pretraining objective."""
    heads = {
        "mim": objective.mim_head,
        "mlm": objective.mlm_head,
        "itm": objective.itm_head,
        "mmm_image": objective.mmm_image_head,
        "mmm_text": objective.mmm_text_head,
    }
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in heads}
    hooks = [
        head.register_forward_hook(lambda m, i, o, k=k: seen[k].append(o))
        for k, head in heads.items()
    ]
    try:
        out = objective({k: v for k, v in batch.items() if k != "mim_labels"})
    finally:
        for hook in hooks:
            hook.remove()
    assert set(out.terms) >= {*TERMS, "contrastive"}
    assert all(len(v) == 1 for v in seen.values()), {k: len(v) for k, v in seen.items()}
    logits = {k: v[0] for k, v in seen.items()}
    logits["itm"] = logits["itm"][: batch["pixel_values"].shape[0]]  # then the B negatives
    return logits


@torch.no_grad()
def transformers_logits(model, batch) -> dict[str, torch.Tensor]:
    """transformers computes MIM and MLM only without the other modality, and MIM / MLM / MMM
    logits only at the labelled positions: masked patches (``bool_masked_pos`` with
    ``mim_labels``) and masked tokens (``mlm_labels``)."""

    def labels():
        return batch["mim_labels"].clone()  # transformers overwrites unmasked entries

    image = model(
        pixel_values=batch["pixel_values"],
        bool_masked_pos=batch["image_mask"],
        mim_labels=labels(),
        return_loss=False,
    )
    text = model(
        input_ids=batch["input_ids"],
        input_ids_masked=batch["masked_input_ids"],
        attention_mask=batch["attention_mask"],
        mlm_labels=batch["mlm_labels"],
        return_loss=False,
    )
    pair = model(
        input_ids=batch["input_ids"],
        input_ids_masked=batch["masked_input_ids"],
        pixel_values=batch["pixel_values"],
        attention_mask=batch["attention_mask"],
        bool_masked_pos=batch["image_mask"],
        mim_labels=labels(),
        mlm_labels=batch["mlm_labels"],
        return_loss=False,
    )
    return {
        "mim": image.mim_logits,
        "mlm": text.mlm_logits,
        "itm": pair.itm_logits,
        "mmm_image": pair.mmm_image_logits,
        "mmm_text": pair.mmm_text_logits,
    }


# ------------------------------------------------------------------------------ parity
def test_heads_give_transformers_logits_end_to_end(hf_model, export):
    """Same masked batch, same positions: every head's logits agree to 1e-5 (max abs)."""
    batch = masked_batch()
    ours = our_logits(pretrain_module(export), batch)
    theirs = transformers_logits(hf_model, batch)
    b = batch["pixel_values"].shape[0]
    masked_patches, masked_tokens = (
        int(batch["image_mask"].sum()),
        int(batch["mlm_labels"].ne(-100).sum()),
    )
    assert theirs["mim"].shape == (masked_patches, IMAGE_VOCAB)
    assert theirs["mmm_image"].shape == (masked_patches, IMAGE_VOCAB)
    assert theirs["mlm"].shape == theirs["mmm_text"].shape == (masked_tokens, TEXT_VOCAB)
    assert theirs["itm"].shape == (b, 2)
    diffs = {k: max_diff(ours[k], theirs[k]) for k in TERMS}
    print("max abs diff vs transformers:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) < TOL, diffs
    # the logits are not trivially equal: heads and positions matter
    assert theirs["mim"].std() > 0.1 and max_diff(theirs["mim"], theirs["mmm_image"]) > 1e-2
    assert max_diff(theirs["mlm"], theirs["mmm_text"]) > 1e-2


def test_export_carries_heads_like_a_pretraining_export(hf_model, export):
    config = read_config(export)
    assert config.mim_target == "codebook" and config.codebook_size == IMAGE_VOCAB
    assert config == config_from_transformers(hf_model.config, mim_target="codebook")
    heads = load_file(str(export / HEADS_NAME))
    expected = expected_head_shapes(config)
    assert set(heads) == set(expected)
    assert all(heads[k].shape == expected[k] for k in heads)
    # tensor for tensor, as the table in flava_zoo.interop.heads says
    pairs = {
        "itm_head.pooler.dense.weight": hf_model.itm_head.pooler.dense.weight,
        "itm_head.classifier.weight": hf_model.itm_head.seq_relationship.weight,
        "itm_head.classifier.bias": hf_model.itm_head.seq_relationship.bias,
        "mlm_head.dense.weight": hf_model.mlm_head.transform.dense.weight,
        "mlm_head.norm.bias": hf_model.mlm_head.transform.LayerNorm.bias,
        "mim_head.decoder.weight": hf_model.mim_head.decoder.weight,
        "mim_head.decoder.bias": hf_model.mim_head.bias,
        "mmm_image_head.decoder.bias": hf_model.mmm_image_head.decoder.bias,
        "mmm_text_head.decoder.weight": hf_model.mmm_text_head.decoder.weight,
    }
    for key, theirs in pairs.items():
        assert torch.equal(heads[key], theirs.detach()), key
    record = json.loads((export / "config.json").read_text())["metadata"]
    assert record["heads"] == [
        "itm_head",
        "mlm_head",
        "mim_head",
        "mmm_text_head",
        "mmm_image_head",
    ]
    assert record["converted_from"]["format"] == "transformers" and record["skipped_heads"] == {}
    assert record["notes"] == []  # every LayerNorm epsilon is 1e-12 on both sides
    # the backbone loads strictly, the ITM head through itm_head_from's loader
    model = create_model(str(export))
    itm = load_itm_head(str(export), model.config.multimodal.hidden_size)
    assert torch.equal(itm.classifier.weight, hf_model.itm_head.seq_relationship.weight.detach())
    assert load_head_state(export, "mmm_image_head").keys() == {
        "dense.weight",
        "dense.bias",
        "norm.weight",
        "norm.bias",
        "decoder.weight",
        "decoder.bias",
    }


def test_codebook_gives_transformers_codes(hf_model, export):
    tokenizer = DalleImageTokenizer.from_file(export / CODEBOOK_NAME)
    assert tokenizer.vocab_size == IMAGE_VOCAB
    pixels = masked_batch(seed=3)["pixel_values"]
    codes = tokenizer.tokenize(pixels, GRID)
    inputs = tokenizer.preprocess(pixels, GRID)
    with torch.no_grad():
        theirs = hf_model.image_codebook.get_codebook_indices(inputs)
        logits, their_logits = tokenizer.encoder(inputs), hf_model.image_codebook(inputs)
    assert codes.shape == (4, N) and torch.equal(codes, theirs.flatten(1))
    assert logits.shape == (4, IMAGE_VOCAB, GRID, GRID) and max_diff(logits, their_logits) < TOL


def test_model_object_converts_like_its_saved_folder(hf_model, export, tmp_path):
    direct = convert_transformers_flava_checkpoint(hf_model, tmp_path / "direct")
    a, b = load_file(str(direct / HEADS_NAME)), load_file(str(export / HEADS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        load_file(str(direct / "model.safetensors")).keys()
        == load_file(str(export / "model.safetensors")).keys()
    )


def test_raw_transformers_and_torchmultimodal_files_give_the_itm_head(hf_model, tmp_path):
    """``itm_head_from`` also takes a transformers weights file or torchmultimodal keys."""
    folder = save_official(hf_model, tmp_path / "official", "safetensors")
    head = load_itm_head(folder / "model.safetensors", D)
    assert torch.equal(head.classifier.bias, hf_model.itm_head.seq_relationship.bias.detach())
    tmm = {
        "loss.itm_loss.pooler.dense.weight": hf_model.itm_head.pooler.dense.weight.detach(),
        "loss.itm_loss.pooler.dense.bias": hf_model.itm_head.pooler.dense.bias.detach(),
        "loss.itm_loss.cls.seq_relationship.weight": hf_model.itm_head.seq_relationship.weight.detach(),
        "loss.itm_loss.cls.seq_relationship.bias": hf_model.itm_head.seq_relationship.bias.detach(),
    }
    torch.save(tmm, tmp_path / "tmm.pt")
    head = load_itm_head(tmp_path / "tmm.pt", D)
    assert torch.equal(head.pooler.dense.weight, tmm["loss.itm_loss.pooler.dense.weight"])


@pytest.fixture
def isolated_zoo(tmp_path, monkeypatch):
    from flava_zoo import zoo

    monkeypatch.setenv("FLAVA_ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLAVA_ZOO_REGISTRY", raising=False)
    monkeypatch.delenv("FLAVA_ZOO_OFFLINE", raising=False)
    zoo.reset_registry()
    yield zoo
    zoo.reset_registry()


def test_published_converted_export_serves_its_heads(export, tmp_path, isolated_zoo):
    """``zoo publish`` ships the converted heads; ``load_pretraining_heads`` returns them
    under our names, as for a pretraining export."""
    zoo = isolated_zoo
    registry = tmp_path / "registry.json"
    zoo.publish(
        export, export.as_uri(), name="flava-base.hfconverted", registry=registry, license="MIT"
    )
    zoo.add_registry(registry)
    heads = zoo.load_pretraining_heads("flava-base.hfconverted")
    saved = load_file(str(export / HEADS_NAME))
    assert heads.keys() == saved.keys() and "itm_head.classifier.weight" in heads
    assert all(torch.equal(heads[k], saved[k]) for k in heads)


def test_transformers_zoo_entry_exports_with_our_heads(hf_model, export, tmp_path, isolated_zoo):
    """A registered transformers checkpoint (``zoo.load_weights``) exports to the same folder
    contents as the checkpoint converted directly."""
    from flava_zoo.zoo.convert import export_weights

    zoo = isolated_zoo
    folder = save_official(hf_model, tmp_path / "official", "safetensors")
    entry = {
        "architecture": "flava-base",
        "format": "transformers",
        "license": "BSD-3-Clause",
        "files": {
            "weights": (folder / "model.safetensors").as_uri(),
            "config": (folder / "config.json").as_uri(),
        },
    }
    (tmp_path / "hf.json").write_text(json.dumps({"models": {"flava-base.hfzoo": entry}}))
    zoo.add_registry(tmp_path / "hf.json")
    weights = zoo.load_weights("flava-base.hfzoo", progress=False)
    assert "itm_head.seq_relationship.weight" in weights.heads  # the source's names, as loaded
    exported = export_weights(weights, tmp_path / "export")
    a, b = load_file(str(exported / HEADS_NAME)), load_file(str(export / HEADS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (exported / CODEBOOK_NAME).is_file() and read_config(exported) == read_config(export)


# --------------------------------------------------------------------------- bad input
def test_head_of_another_width_is_refused_naming_both_shapes(tmp_path):
    """transformers builds MMM-image at the image width but applies it to fusion states:
    with a 64-wide image tower and a 48-wide fusion encoder it cannot map (nor run)."""
    torch.manual_seed(0)
    model = transformers.FlavaForPreTraining(hf_config(image_hidden=64, init_codebook=False))
    with pytest.raises(
        ValueError,
        match=r"mmm_image_head\.dense\.weight: \(64, 64\) in the checkpoint vs \(48, 48\)",
    ):
        convert_transformers_flava_checkpoint(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # what does fit still converts, and the export says what was left out
    folder = convert_transformers_flava_checkpoint(
        model, tmp_path / "good", heads=["itm_head", "mlm_head", "mim_head", "mmm_text_head"]
    )
    record = json.loads((folder / "config.json").read_text())["metadata"]
    assert record["skipped_heads"] == {"mmm_image_head": "not requested"}
    assert not (folder / CODEBOOK_NAME).exists()


def test_itm_head_of_another_width_is_refused_naming_both_shapes(export):
    with pytest.raises(
        ValueError, match=r"pooler\.dense\.weight is \(48, 48\) in the file, \(32, 32\) here"
    ):
        load_itm_head(str(export), 32)


def test_pixel_mim_target_leaves_the_codebook_heads_out(hf_model, tmp_path):
    folder = convert_transformers_flava_checkpoint(
        hf_model, tmp_path / "pixels", mim_target="pixels"
    )
    assert read_config(folder).mim_target == "pixels"
    assert {k.split(".")[0] for k in load_file(str(folder / HEADS_NAME))} == {
        "itm_head", "mlm_head", "mmm_text_head"
    }  # fmt: skip
    record = json.loads((folder / "config.json").read_text())["metadata"]
    assert set(record["skipped_heads"]) == {"mim_head", "mmm_image_head"}
    config = config_from_transformers(hf_model.config)  # pixels, our default
    with pytest.raises(
        ValueError, match=r"mim_head\.decoder\.weight: \(64, 48\) .* \(192, 48\).*codebook"
    ):
        convert_transformers_flava_heads(hf_model.state_dict(), config, heads=["mim_head"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mlm_head.bias": torch.zeros(TEXT_VOCAB)}, "tied .* but differ"),
        (
            {"itm_head.extra.weight": torch.zeros(2)},
            r"not part of transformers' FLAVA heads.*itm_head\.extra",
        ),
        (
            {"mlm_head.decoder.weight": torch.zeros(TEXT_VOCAB + 1, D)},
            r"\(201, 48\) in the checkpoint vs \(200, 48\)",
        ),
    ],
)
def test_bad_head_tensors_are_refused(hf_model, change, match):
    state = {k: v for k, v in hf_model.state_dict().items() if not k.startswith("flava.")}
    config = config_from_transformers(hf_model.config, mim_target="codebook")
    with pytest.raises(ValueError, match=match):
        convert_transformers_flava_heads({**state, **change}, config)


def test_incomplete_head_is_refused(hf_model):
    state = {k: v for k, v in hf_model.state_dict().items() if not k.startswith("flava.")}
    del state["itm_head.pooler.dense.bias"]
    config = config_from_transformers(hf_model.config, mim_target="codebook")
    with pytest.raises(ValueError, match=r"incomplete .*itm_head\.pooler\.dense\.bias"):
        convert_transformers_flava_heads(state, config)


# ------------------------------------------------------------- zero-shot ITM re-ranking
@pytest.fixture(scope="module")
def shapes_export(tmp_path_factory):
    """A tiny transformers FLAVA sized for the shapes world (64 px, its 254-token
    vocabulary, 48-token captions), saved officially and converted."""
    root = tmp_path_factory.mktemp("hf-shapes")
    common = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config = transformers.FlavaConfig(
        image_config=dict(image_size=64, patch_size=16, vocab_size=32, **common),
        text_config=dict(vocab_size=256, max_position_embeddings=64, **common),
        multimodal_config=common,
        hidden_size=32,
        projection_dim=16,
        init_codebook=False,
    )
    torch.manual_seed(0)
    model = transformers.FlavaForPreTraining(config).eval()
    perturb(model, seed=2)
    folder = save_official(model, root / "official", "safetensors")
    return model, convert_transformers_flava_checkpoint(folder, root / "export")


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
@pytest.mark.parametrize("recipe", ["shapes_retrieval", "shapes_classification"])
def test_itm_reranked_zero_shot_runs_from_a_converted_checkpoint(
    shapes_export, recipe, tmp_path, monkeypatch
):
    from flava_zoo.cli import main
    from flava_zoo.downstream import RetrievalModule
    from flava_zoo.evaluation.results import read_results
    from flava_zoo.models.heads import ITMHead

    model, export = shapes_export
    module = RetrievalModule(model=str(export), itm_rerank_k=3, itm_head_from=str(export))
    assert torch.equal(
        module.itm_head.classifier.weight, model.itm_head.seq_relationship.weight.detach()
    )
    scored = []
    forward = ITMHead.forward
    monkeypatch.setattr(
        ITMHead, "forward", lambda self, cls: scored.append(len(cls)) or forward(self, cls)
    )
    results = tmp_path / "scores.jsonl"
    main([
        "test", "--config", str(ROOT / "recipes" / "zeroshot" / f"{recipe}.yaml"),
        "--data.init_args.test_size=12", "--data.init_args.batch_size=4",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.results={results}",
        f"--model.init_args.model={export}", "--model.init_args.itm_rerank_k=3",
        f"--model.init_args.itm_head_from={export}",
    ])  # fmt: skip
    assert sum(scored) >= 12 * 3  # each test image's top 3 were re-ranked by the converted head
    records = read_results(results)
    assert records and all(r.model_source == str(export.resolve()) for r in records)
    task = "shapes/retrieval" if recipe == "shapes_retrieval" else "shapes/image_classification"
    assert all(r.task == task and r.num_samples > 0 for r in records)


# -------------------------------------------------------------------- torchmultimodal
# Head keys exactly as torchmultimodal 2024.4.1's FLAVAForPreTraining state_dict names them
# (FLAVAPretrainingLoss and the DALL-E encoder), read from the library.
TMM_MASKED = ["bias", "dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias",
              "decoder.weight", "decoder.bias"]  # fmt: skip
TMM_HEADS = {
    "loss.mlm_loss.cls.": ("mlm_head", TEXT_VOCAB),
    "loss.mim_loss.cls.": ("mim_head", IMAGE_VOCAB),
    "loss.mmm_loss.mlm.cls.": ("mmm_text_head", TEXT_VOCAB),
    "loss.mmm_loss.mim.cls.": ("mmm_image_head", IMAGE_VOCAB),
}


def tmm_config() -> FlavaConfig:
    return FlavaConfig(
        image=ImageEncoderConfig(
            image_size=IMAGE, patch_size=PATCH, hidden_size=D, num_layers=2, num_heads=4, intermediate_size=96
        ),
        text=TextEncoderConfig(
            vocab_size=TEXT_VOCAB, max_position_embeddings=32, hidden_size=D, num_layers=1, num_heads=4,
            intermediate_size=80,
        ),
        multimodal=FusionEncoderConfig(hidden_size=D, num_layers=2, num_heads=4, intermediate_size=64),
        projection_dim=32,
        codebook_size=IMAGE_VOCAB,
    )  # fmt: skip


def test_torchmultimodal_head_keys_map_onto_ours():
    """Runs everywhere: the key mapping on tensors named as torchmultimodal names them."""
    g = torch.Generator().manual_seed(0)
    heads = {}
    for prefix, (_, vocab) in TMM_HEADS.items():
        shapes = {"bias": (vocab,), "dense.weight": (D, D), "dense.bias": (D,), "layer_norm.weight": (D,),
                  "layer_norm.bias": (D,), "decoder.weight": (vocab, D)}  # fmt: skip
        for part in TMM_MASKED:
            if part != "decoder.bias":
                heads[prefix + part] = torch.randn(shapes[part], generator=g)
        heads[prefix + "decoder.bias"] = heads[prefix + "bias"]  # one parameter, two names
    for part, shape in {"pooler.dense.weight": (D, D), "pooler.dense.bias": (D,),
                        "cls.seq_relationship.weight": (2, D), "cls.seq_relationship.bias": (2,)}.items():  # fmt: skip
        heads[f"loss.itm_loss.{part}"] = torch.randn(shape, generator=g)
    converted = convert_transformers_flava_heads(
        torchmultimodal_heads_to_transformers(heads),
        tmm_config().replace(mim_target="codebook"),
        source_eps=dict.fromkeys(MASKED_HEADS, TORCHMULTIMODAL_HEAD_EPS),
    )
    assert set(converted.heads) == set(
        expected_head_shapes(tmm_config().replace(mim_target="codebook"))
    )
    for prefix, (name, _) in TMM_HEADS.items():
        assert converted.heads[f"{name}.norm.weight"] is heads[prefix + "layer_norm.weight"]
        assert converted.heads[f"{name}.dense.bias"] is heads[prefix + "dense.bias"]
        assert torch.equal(converted.heads[f"{name}.decoder.bias"], heads[prefix + "bias"])
    assert (
        converted.heads["itm_head.classifier.weight"]
        is heads["loss.itm_loss.cls.seq_relationship.weight"]
    )
    assert len(converted.ignored) == 4  # each head's second bias name
    assert len(converted.notes) == 4 and all(
        "eps 1e-05 in the source, 1e-12 here" in n for n in converted.notes
    )
    with pytest.raises(ValueError, match="not part of torchmultimodal's FLAVA heads.*loss.extra"):
        torchmultimodal_heads_to_transformers({**heads, "loss.extra.weight": torch.zeros(1)})


class _Codebook(nn.Module):
    """torchmultimodal's DalleVAEEncoder without its download: codes of a small encoder."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels).argmax(1)


@pytest.fixture(scope="module")
def tmm_model():
    mm = pytest.importorskip("torchmultimodal.models.flava.model")
    losses = pytest.importorskip("torchmultimodal.modules.losses.flava")
    torch.manual_seed(0)
    backbone = mm.flava_model(
        image_hidden_size=D, image_num_attention_heads=4, image_num_hidden_layers=2,
        image_intermediate_size=96, image_size=IMAGE, patch_size=PATCH,
        text_hidden_size=D, text_num_attention_heads=4, text_num_hidden_layers=1,
        text_intermediate_size=80, vocab_size=TEXT_VOCAB, max_position_embeddings=32,
        multimodal_hidden_size=D, multimodal_num_attention_heads=4, multimodal_num_hidden_layers=2,
        multimodal_intermediate_size=64, text_and_image_proj_size=32,
    )  # fmt: skip
    loss = losses.FLAVAPretrainingLoss(
        hidden_size=D, text_vocab_size=TEXT_VOCAB, image_vocab_size=IMAGE_VOCAB
    )
    codebook = _Codebook(mm.DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=IMAGE_VOCAB))
    model = mm.FLAVAForPreTraining(model=backbone, image_codebook=codebook, loss=loss).eval()
    perturb(model, seed=1)
    return model


@torch.no_grad()
def tmm_logits(model, batch, codebook_pixels) -> dict[str, torch.Tensor]:
    """torchmultimodal, like transformers, computes MIM / MLM only without the other
    modality, at the labelled positions (its ignore index is -1)."""
    labels = batch["mlm_labels"].masked_fill(batch["mlm_labels"].eq(-100), -1)
    image = model(
        image=batch["pixel_values"], image_for_codebook=codebook_pixels,
        image_patches_mask=batch["image_mask"], required_embedding="image",
    )  # fmt: skip
    text = model(
        text=batch["input_ids"], text_masked=batch["masked_input_ids"], mlm_labels=labels,
        required_embedding="text",
    )  # fmt: skip
    pair = model(
        image=batch["pixel_values"], text=batch["input_ids"], image_for_codebook=codebook_pixels,
        image_patches_mask=batch["image_mask"], text_masked=batch["masked_input_ids"], mlm_labels=labels,
        itm_labels=torch.ones(batch["input_ids"].shape[0], dtype=torch.long), required_embedding="mm",
    )  # fmt: skip
    return {
        "mim": image.mim_output.logits,
        "mlm": text.mlm_output.logits,
        "itm": pair.itm_output.logits,
        "mmm_image": pair.mmm_image_output.logits,
        "mmm_text": pair.mmm_text_output.logits,
    }


def test_torchmultimodal_heads_give_its_logits_end_to_end(tmm_model, tmp_path):
    """Only where torchmultimodal is installed. Its masked-prediction heads use LayerNorm eps
    1e-5, which no weights file records; the conversion carries it in the config
    (``head_layer_norm_eps``), so the converted logits agree to 1e-5 as they are."""
    torch.save(tmm_model.state_dict(), tmp_path / "flava_for_pretraining.pt")
    export = export_torchmultimodal_flava(
        tmp_path / "flava_for_pretraining.pt", tmm_config(), tmp_path / "export"
    )
    record = json.loads((export / "config.json").read_text())["metadata"]
    assert read_config(export).head_layer_norm_eps == TORCHMULTIMODAL_HEAD_EPS
    assert record["notes"] == [] and record["heads"] == [
        "itm_head", "mlm_head", "mim_head", "mmm_text_head", "mmm_image_head"
    ]  # fmt: skip
    objective = pretrain_module(export)
    batch = masked_batch(seed=5, padded=False)  # its fusion encoder takes no padding mask
    codebook_pixels = objective.image_tokenizer.preprocess(batch["pixel_values"], GRID)
    theirs = tmm_logits(tmm_model, batch, codebook_pixels)
    ours = our_logits(objective, batch)
    diffs = {k: max_diff(ours[k], theirs[k]) for k in TERMS}
    print("max abs diff vs torchmultimodal:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) < TOL, diffs
    # our codebook file gives torchmultimodal's MIM targets
    codes = objective.image_tokenizer.tokenize(batch["pixel_values"], GRID)
    assert torch.equal(codes, tmm_model.image_codebook(codebook_pixels).flatten(1))


def test_converted_backbone_matches_direct_conversion(hf_model, export):
    """The export's backbone is the one :func:`convert_transformers_flava_state_dict` gives."""
    config = read_config(export)
    direct = convert_transformers_flava_state_dict(hf_model.state_dict(), config).model
    saved = load_file(str(export / "model.safetensors"))
    assert saved.keys() == direct.keys() and all(torch.equal(saved[k], direct[k]) for k in saved)


def test_flava_zoo_export_heads_pass_through(tmp_path):
    """A flava-zoo export round-trips through the exporter with its heads unchanged."""
    from flava_zoo.zoo.convert import _export

    model = create_model("flava-tiny")
    heads = {f"itm_head.{k}": v for k, v in nn.Linear(1, 1).state_dict().items()}
    with pytest.raises(ValueError, match="have no place in our heads"):
        _export(
            tmp_path / "x",
            "flava-zoo",
            "test",
            model.config,
            model.state_dict(),
            heads,
            [],
            [],
            None,
            None,
        )
    state = {
        k: torch.randn(shape)
        for k, shape in expected_head_shapes(model.config).items()
        if k.startswith("itm_head.")
    }
    folder = _export(
        tmp_path / "y",
        "flava-zoo",
        "test",
        model.config,
        model.state_dict(),
        state,
        [],
        [],
        None,
        None,
    )
    saved = load_file(str(folder / HEADS_NAME))
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)


def test_either_name_of_a_tied_bias_is_enough(hf_model):
    """transformers 5 saves ``X.decoder.bias``, facebook/flava-full both names; a file with
    only ``X.bias`` maps too."""
    state = {k: v for k, v in hf_model.state_dict().items() if not k.startswith("flava.")}
    config = config_from_transformers(hf_model.config, mim_target="codebook")
    only_alias = {k: v for k, v in state.items() if not k.endswith("head.decoder.bias")}
    converted = convert_transformers_flava_heads(only_alias, config)
    assert converted.ignored == []
    assert converted.heads["mlm_head.decoder.bias"] is state["mlm_head.bias"]
    both = convert_transformers_flava_heads(state, config)
    assert sorted(both.ignored) == sorted(f"{name}.bias" for name in MASKED_HEADS)
    assert both.heads.keys() == converted.heads.keys()


def test_backbone_only_checkpoint_exports_without_heads(hf_model, tmp_path):
    folder = convert_transformers_flava_checkpoint(hf_model.flava, tmp_path / "backbone")
    assert not (folder / HEADS_NAME).exists() and not (folder / CODEBOOK_NAME).exists()
    assert read_config(folder).mim_target == "pixels"  # nothing asks for codebook targets
    with pytest.raises(FileNotFoundError, match="holds no pretraining heads"):
        load_itm_head(str(folder), D)
