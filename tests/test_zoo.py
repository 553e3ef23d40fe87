"""The model zoo end to end: the shipped registry, publishing, and loading each source format
(flava-zoo exports, transformers' FLAVA, torchmultimodal's FLAVA) over a real HTTP server
on 127.0.0.1, as create_model("arch.tag") does."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import flava_zoo
from flava_zoo import create_model, list_models, save_pretrained
from flava_zoo.config import FlavaConfig, FusionEncoderConfig, ImageEncoderConfig, TextEncoderConfig
from flava_zoo.tokenizer import FlavaTokenizer
from flava_zoo.zoo import FORMATS, get_entry, list_pretrained
from flava_zoo.zoo.cli import main as zoo_main
from flava_zoo.zoo.registry import Registry, parse_registry

zoo = flava_zoo.zoo
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue", "square"]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    """A static HTTP server on 127.0.0.1 over tmp_path/www; yields (root, base_url, requests)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    httpd.daemon_threads = True
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield root, f"http://127.0.0.1:{httpd.server_port}", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(isolated_zoo):
    """Every test here gets its own zoo home and the built-in registry (conftest)."""
    yield


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def batch(config: FlavaConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = config.image.image_size
    pixels = torch.randn(2, 3, size, size, generator=g)
    ids = torch.randint(5, config.text.vocab_size, (2, 7), generator=g)
    return dict(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids))


def assert_same_outputs(a, b, config: FlavaConfig) -> None:
    inputs = batch(config)
    with torch.no_grad():
        x, y = a.eval()(**inputs), b.eval()(**inputs)
    assert torch.equal(x.image.embedding, y.image.embedding)
    assert torch.equal(x.text.embedding, y.text.embedding)
    assert torch.equal(x.multimodal.last_hidden_state, y.multimodal.last_hidden_state)


# --- the shipped registry -----------------------------------------------------------------


def test_official_entries_are_listed():
    names = list_pretrained()
    assert {"flava-base.facebook", "flava-base.torchmultimodal"} <= set(names)
    assert list_pretrained("flava-base.*") == sorted(
        n for n in names if n.startswith("flava-base.")
    )
    assert flava_zoo.zoo.get_entry("flava-base").name == "flava-base.facebook"  # the default


@pytest.mark.parametrize("name", Registry().names())  # the shipped entries only
def test_shipped_entry_metadata(name):
    entry = get_entry(name)
    assert entry.architecture in list_models()
    assert entry.format in FORMATS and entry.license
    assert entry.paper["url"].startswith("https://arxiv.org/abs/")
    for role, spec in entry.files.items():
        assert spec.url and spec.url.startswith("https://"), role  # usable without huggingface_hub
    assert entry.tokenizer and entry.tokenizer["vocab"] in entry.files
    config = flava_zoo.get_config(entry.architecture)
    assert entry.transform["image_size"] == config.image.image_size
    assert len(entry.transform["mean"]) == len(entry.transform["std"]) == 3
    json.dumps(entry.to_dict())  # round-trips to registry JSON


def test_official_files():
    fb = get_entry("flava-base.facebook")
    weights = fb.files["weights"]
    assert (weights.hub, weights.filename) == ("facebook/flava-full", "pytorch_model.bin")
    assert (
        weights.url == "https://huggingface.co/facebook/flava-full/resolve/main/pytorch_model.bin"
    )
    assert weights.sha256 is None and weights.size is None  # trust on first use
    assert fb.format == "transformers" and fb.license == "BSD-3-Clause"
    assert fb.metrics["values"]["zero_shot/coco/image_to_text_R@1"] == 42.7
    tmm = get_entry("flava-base.torchmultimodal")
    assert tmm.format == "torchmultimodal"
    assert tmm.files["weights"].url == (
        "https://download.pytorch.org/models/multimodal/flava/flava_for_pretraining_unified_text_encoder.pt"
    )


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ValueError, match="flava-base.facebook"):
        get_entry("flava-base.facebok")
    with pytest.raises(ValueError, match="no pretrained weights for 'flava-tiny'"):
        create_model("flava-tiny", pretrained=True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "onnx"}, "format must be one of"),
        ({"architecture": "flava-large"}, "architecture is 'flava-large' but the name says"),
        ({"files": {"vocab": "v.txt"}}, "at least a 'weights' file"),
        ({"files": {"weights": {"url": "w", "sha256": "xyz"}}}, r"files.weights: sha256 must be"),
        ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        ({"tokenizer": {"vocab": "nope"}}, "tokenizer.vocab must name one of the files"),
    ],
)
def test_registry_errors_name_the_field(change, message):
    entry = {"architecture": "flava-tiny", "format": "flava-zoo", "license": "MIT", "config": {}}
    entry["files"] = {"weights": "w.safetensors"}
    entry.update(change)
    with pytest.raises(ValueError, match=message) as err:
        parse_registry({"models": {"flava-tiny.x": entry}}, "my.json")
    assert "my.json: models['flava-tiny.x']" in str(err.value)


# --- publishing a model trained here ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export_source(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("flava-tiny")
    export = tmp_path_factory.mktemp("export")
    save_pretrained(model, export, metadata={"recipe": "quickstart"})
    FlavaTokenizer({t: i for i, t in enumerate(VOCAB)}, max_length=16).save(export)
    return model, export


@pytest.fixture
def tiny_export(tiny_export_source, tmp_path):
    """A fresh copy per test (publishing may write a registry into it)."""
    model, source = tiny_export_source
    export = tmp_path / "export"
    export.mkdir()
    for file in source.iterdir():
        (export / file.name).write_bytes(file.read_bytes())
    return model, export


def publish_to(served, export: Path, name: str, *extra: str) -> tuple[Path, str]:
    root, base, _ = served
    zoo_dir = root / "zoo"
    zoo_dir.mkdir(exist_ok=True)
    for file in export.iterdir():
        (zoo_dir / file.name).write_bytes(file.read_bytes())
    registry = zoo_dir / "registry.json"
    args = [
        "publish",
        str(export),
        "--url-base",
        f"{base}/zoo",
        "--name",
        name,
        "-o",
        str(registry),
    ]
    assert zoo_main([*args, "--license", "MIT", *extra]) == 0
    return registry, f"{base}/zoo/registry.json"


def test_publish_then_create_model_over_http(served, tiny_export, capsys):
    model, export = tiny_export
    registry, registry_url = publish_to(served, export, "flava-tiny.mytag")
    entry = json.loads(registry.read_text())["models"]["flava-tiny.mytag"]
    weights = export / "model.safetensors"
    assert entry["files"]["weights"]["size"] == weights.stat().st_size
    assert entry["files"]["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry["config"] == model.config.to_dict()
    assert entry["training"]["recipe"] == "quickstart"
    assert entry["tokenizer"] == {"vocab": "vocab", "lowercase": True, "max_length": 16}

    assert zoo.add_registry(registry_url) == ["flava-tiny.mytag"]
    loaded = create_model("flava-tiny.mytag")
    assert same_state(loaded, model)
    assert_same_outputs(loaded, model, model.config)
    tokenizer = zoo.load_tokenizer("flava-tiny.mytag")
    assert tokenizer("a red circle")["input_ids"].tolist() == [[2, 5, 6, 7, 3]]
    assert zoo.image_transform("flava-tiny.mytag")(torch.rand(3, 80, 100)).shape == (3, 64, 64)
    assert zoo.load_pretraining_heads("flava-tiny.mytag") == {}  # the export has no heads
    # overrides that leave shapes alone, applied before the weights load
    assert create_model(
        "flava-tiny.mytag", gradient_checkpointing=True
    ).config.gradient_checkpointing

    assert zoo_main(["--registry", registry_url, "info", "flava-tiny.mytag"]) == 0
    out = capsys.readouterr().out
    assert "flava-zoo format, MIT" in out and "cached" in out
    assert zoo_main(["--registry", registry_url, "verify", "flava-tiny.mytag"]) == 0


def test_published_export_ships_its_pretraining_heads(served, tiny_export):
    from safetensors.torch import save_file

    from flava_zoo.checkpoint import HEADS_NAME

    _, export = tiny_export
    heads = {"itm_head.classifier.weight": torch.randn(2, 128), "itm_head.classifier.bias": torch.randn(2)}
    save_file(heads, export / HEADS_NAME)
    registry, registry_url = publish_to(served, export, "flava-tiny.withheads")
    entry = json.loads(registry.read_text())["models"]["flava-tiny.withheads"]
    digest = hashlib.sha256((export / HEADS_NAME).read_bytes()).hexdigest()
    assert entry["files"]["heads"]["sha256"] == digest
    zoo.add_registry(registry_url)
    loaded = zoo.load_pretraining_heads("flava-tiny.withheads")
    assert loaded.keys() == heads.keys()
    assert all(torch.equal(loaded[k], heads[k]) for k in heads)
    # the backbone alone does not fetch the heads file
    assert zoo.load_weights("flava-tiny.withheads", with_heads=False).heads == {}


def test_a_shared_disk_zoo_through_the_environment(tmp_path, tiny_export, monkeypatch):
    """Registry and files side by side on a disk (relative URLs), named by FLAVA_ZOO_REGISTRY."""
    model, export = tiny_export
    registry = export / "registry.json"
    assert (
        zoo_main(
            [
                "publish",
                str(export),
                "--url-base",
                ".",
                "--name",
                "flava-tiny.disk",
                "-o",
                str(registry),
                "--default",
            ]
        )
        == 0
    )
    assert (
        json.loads(registry.read_text())["models"]["flava-tiny.disk"]["files"]["weights"]["url"]
        == "model.safetensors"
    )
    monkeypatch.setenv("FLAVA_ZOO_REGISTRY", f"{registry.as_uri()};")
    zoo.reset_registry()
    assert "flava-tiny.disk" in list_pretrained()
    assert same_state(create_model("flava-tiny", pretrained=True), model)  # --default


def test_offline_loads_from_the_cache_only(served, tiny_export, monkeypatch):
    model, export = tiny_export
    _, registry_url = publish_to(served, export, "flava-tiny.off")
    requests = served[2]
    zoo.add_registry(registry_url)
    create_model("flava-tiny.off")
    monkeypatch.setenv("FLAVA_ZOO_OFFLINE", "1")
    zoo.reset_registry()
    before = len(requests)
    zoo.add_registry(registry_url)  # the cached copy of the registry
    assert same_state(create_model("flava-tiny.off"), model)
    assert len(requests) == before


# --- transformers' FLAVA -----------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_pretraining():
    transformers = pytest.importorskip("transformers")
    config = transformers.FlavaConfig(
        image_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=64,
        ),
        text_config=dict(
            vocab_size=200,
            max_position_embeddings=32,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
        ),
        multimodal_config=dict(
            hidden_size=56, num_hidden_layers=2, num_attention_heads=4, intermediate_size=112
        ),
        hidden_size=56,
        projection_dim=32,
        init_codebook=False,
    )
    torch.manual_seed(0)
    model = transformers.FlavaForPreTraining(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_transformers_checkpoint_entry(served, hf_pretraining, tmp_path):
    from flava_zoo.interop import load_transformers_flava

    root, base, _ = served
    folder = root / "hf-tiny"
    folder.mkdir()
    torch.save(hf_pretraining.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(hf_pretraining.config.to_dict()))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    registry = tmp_path / "hf.json"
    registry.write_text(
        json.dumps(
            {
                "format_version": 1,
                "models": {
                    "flava-base.hftiny": {
                        "architecture": "flava-base",
                        "format": "transformers",
                        "license": "BSD-3-Clause",
                        "files": {
                            "weights": {
                                "url": f"{base}/hf-tiny/pytorch_model.bin",
                                "sha256": None,
                                "size": None,
                            },
                            "config": f"{base}/hf-tiny/config.json",
                            "vocab": f"{base}/hf-tiny/vocab.txt",
                        },
                        "tokenizer": {"vocab": "vocab"},
                    }
                },
            }
        )
    )
    zoo.add_registry(registry)
    ours = create_model("flava-base.hftiny")
    expected = load_transformers_flava(hf_pretraining.flava)
    assert ours.config == expected.config and ours.config.image.image_size == 32
    assert same_state(ours, expected)
    assert_same_outputs(ours, expected, ours.config)
    heads = zoo.load_pretraining_heads("flava-base.hftiny")
    # (no codebook keys: the fixture is built with init_codebook=False)
    for prefix in ("mlm_head.", "mim_head.", "itm_head.", "mmm_text_head.", "mmm_image_head."):
        assert any(k.startswith(prefix) for k in heads), prefix
    assert torch.equal(
        heads["itm_head.seq_relationship.weight"], hf_pretraining.itm_head.seq_relationship.weight
    )
    assert zoo.load_tokenizer("flava-base.hftiny").vocab_size == len(VOCAB)


def test_a_pickle_that_runs_code_is_refused(served, tmp_path):
    root, base, _ = served
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weights": Exploit()}, root / "evil.bin")
    registry = tmp_path / "evil.json"
    registry.write_text(
        json.dumps(
            {
                "models": {
                    "flava-base.evil": {
                        "architecture": "flava-base",
                        "format": "transformers",
                        "license": "none",
                        "files": {"weights": f"{base}/evil.bin"},
                    }
                }
            }
        )
    )
    zoo.add_registry(registry)
    with pytest.raises(ValueError, match="refusing to load .*evil.bin"):
        create_model("flava-base.evil")
    assert not marker.exists()


# --- torchmultimodal's FLAVA --------------------------------------------------------------

# Key names exactly as torchmultimodal 2024.4.1's flava_model_for_pretraining() state_dict has
# them (read from the library, not derived from our converter); {i} runs over the layers.
TMM_LAYER = [
    "attention.query.{p}",
    "attention.key.{p}",
    "attention.value.{p}",
    "attention.output.{p}",
    "feedforward.model.0.{p}",
    "feedforward.model.2.{p}",
    "attention_layernorm.{p}",
    "feedforward_layernorm.{p}",
]
TMM_OTHER = {
    "image_encoder": [
        "embeddings.cls_token",
        "embeddings.position_embeddings",
        "embeddings.mask_token",
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.projection.bias",
        "layernorm.weight",
        "layernorm.bias",
        "pooler.dense.weight",
        "pooler.dense.bias",
    ],
    "text_encoder": [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.layer_norm.weight",
        "embeddings.layer_norm.bias",
        "layernorm.weight",
        "layernorm.bias",
        "pooler.dense.weight",
        "pooler.dense.bias",
    ],
    "mm_encoder": [
        "cls_token",
        "layernorm.weight",
        "layernorm.bias",
        "pooler.dense.weight",
        "pooler.dense.bias",
    ],
}
TMM_TOP = [
    "image_to_mm_projection.weight",
    "image_to_mm_projection.bias",
    "text_to_mm_projection.weight",
    "text_to_mm_projection.bias",
    "text_projection.weight",
    "text_projection.bias",
    "image_projection.weight",
    "image_projection.bias",
]
TMM_HEADS = [
    "loss.mlm_loss.cls.decoder.weight",
    "loss.itm_loss.pooler.dense.weight",
    "loss.itm_loss.cls.seq_relationship.weight",
    "image_codebook.encoder.blocks.input.w",
]


def tmm_config() -> FlavaConfig:
    return FlavaConfig(
        image=ImageEncoderConfig(
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            intermediate_size=128,
        ),
        text=TextEncoderConfig(
            vocab_size=200,
            max_position_embeddings=32,
            hidden_size=48,
            num_layers=2,
            num_heads=4,
            intermediate_size=96,
        ),
        multimodal=FusionEncoderConfig(
            hidden_size=56, num_layers=2, num_heads=4, intermediate_size=112
        ),
        projection_dim=32,
    )


def tmm_state_dict(
    config: FlavaConfig, seed: int = 0
) -> tuple[dict[str, torch.Tensor], flava_zoo.FlavaModel]:
    """A torchmultimodal FLAVAForPreTraining state dict (keys as the library names them),
    filled by mapping a random flava-zoo model's tensors through transformers' names."""
    torch.manual_seed(seed)
    ref = flava_zoo.FlavaModel(config)
    sd = ref.state_dict()
    towers = {
        "image_encoder": "image_encoder",
        "text_encoder": "text_encoder",
        "mm_encoder": "fusion_encoder.layers",
    }
    out: dict[str, torch.Tensor] = {}
    for tower, ours in towers.items():
        n = config.multimodal.num_layers if tower == "mm_encoder" else 2
        for i in range(n):
            block = f"{ours}.encoder.blocks.{i}"
            for p in ("weight", "bias"):
                q, k, v = sd[f"{block}.attn.qkv.{p}"].chunk(3)
                out[f"model.{tower}.encoder.layer.{i}.attention.query.{p}"] = q
                out[f"model.{tower}.encoder.layer.{i}.attention.key.{p}"] = k
                out[f"model.{tower}.encoder.layer.{i}.attention.value.{p}"] = v
                out[f"model.{tower}.encoder.layer.{i}.attention.output.{p}"] = sd[
                    f"{block}.attn.proj.{p}"
                ]
                out[f"model.{tower}.encoder.layer.{i}.feedforward.model.0.{p}"] = sd[
                    f"{block}.mlp.fc1.{p}"
                ]
                out[f"model.{tower}.encoder.layer.{i}.feedforward.model.2.{p}"] = sd[
                    f"{block}.mlp.fc2.{p}"
                ]
                out[f"model.{tower}.encoder.layer.{i}.attention_layernorm.{p}"] = sd[
                    f"{block}.norm1.{p}"
                ]
                out[f"model.{tower}.encoder.layer.{i}.feedforward_layernorm.{p}"] = sd[
                    f"{block}.norm2.{p}"
                ]
    ie, te, fe = "image_encoder", "text_encoder", "fusion_encoder"
    pairs = {
        "image_encoder.embeddings.cls_token": f"{ie}.cls_token",
        "image_encoder.embeddings.position_embeddings": f"{ie}.pos_embed",
        "image_encoder.embeddings.mask_token": f"{ie}.mask_token",
        "image_encoder.embeddings.patch_embeddings.projection.weight": f"{ie}.patch_embed.proj.weight",
        "image_encoder.embeddings.patch_embeddings.projection.bias": f"{ie}.patch_embed.proj.bias",
        "image_encoder.layernorm.weight": f"{ie}.norm.weight",
        "image_encoder.layernorm.bias": f"{ie}.norm.bias",
        "text_encoder.embeddings.word_embeddings.weight": f"{te}.embeddings.word.weight",
        "text_encoder.embeddings.position_embeddings.weight": f"{te}.embeddings.position.weight",
        "text_encoder.embeddings.token_type_embeddings.weight": f"{te}.embeddings.segment.weight",
        "text_encoder.embeddings.layer_norm.weight": f"{te}.embeddings.norm.weight",
        "text_encoder.embeddings.layer_norm.bias": f"{te}.embeddings.norm.bias",
        "text_encoder.layernorm.weight": f"{te}.norm.weight",
        "text_encoder.layernorm.bias": f"{te}.norm.bias",
        "mm_encoder.cls_token": f"{fe}.cls_token",
        "mm_encoder.layernorm.weight": f"{fe}.layers.norm.weight",
        "mm_encoder.layernorm.bias": f"{fe}.layers.norm.bias",
        "image_to_mm_projection.weight": f"{fe}.image_proj.weight",
        "image_to_mm_projection.bias": f"{fe}.image_proj.bias",
        "text_to_mm_projection.weight": f"{fe}.text_proj.weight",
        "text_to_mm_projection.bias": f"{fe}.text_proj.bias",
    }
    for theirs, mine in pairs.items():
        out[f"model.{theirs}"] = sd[mine]
    for key in TMM_TOP:
        if f"model.{key}" not in out:
            out[f"model.{key}"] = sd[key]
    for tower, keys in TMM_OTHER.items():
        for key in keys:
            if f"model.{tower}.{key}" not in out:  # the poolers, which we do not keep
                out[f"model.{tower}.{key}"] = torch.randn(1)
    out["loss.contrastive_loss.logit_scale"] = sd["logit_scale"]
    for key in TMM_HEADS:
        out[key] = torch.randn(2, 2)
    expected = {
        f"model.{t}.encoder.layer.{i}.{k.format(p=p)}"
        for t in towers
        for i in range(2)
        for k in TMM_LAYER
        for p in ("weight", "bias")
    }
    expected |= {f"model.{t}.{k}" for t, keys in TMM_OTHER.items() for k in keys}
    expected |= {f"model.{k}" for k in TMM_TOP} | {"loss.contrastive_loss.logit_scale", *TMM_HEADS}
    assert set(out) == expected, set(out) ^ expected
    return out, ref


def test_torchmultimodal_checkpoint_entry(tmp_path):
    config = tmm_config()
    state, ref = tmm_state_dict(config)
    torch.save(state, tmp_path / "flava_for_pretraining.pt")
    registry = tmp_path / "tmm.json"
    registry.write_text(
        json.dumps(
            {
                "models": {
                    "flava-base.tmmtiny": {
                        "architecture": "flava-base",
                        "format": "torchmultimodal",
                        "license": "BSD-3-Clause",
                        "config": config.to_dict(),
                        "files": {"weights": (tmp_path / "flava_for_pretraining.pt").as_uri()},
                    }
                }
            }
        )
    )
    zoo.add_registry(registry)
    ours = create_model("flava-base.tmmtiny")
    assert same_state(ours, ref)
    heads = zoo.load_pretraining_heads("flava-base.tmmtiny")
    assert set(heads) == set(TMM_HEADS)
    # A backbone-only FLAVAModel file has no logit scale: it comes from the config.
    backbone = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    converted, heads = zoo.torchmultimodal_to_transformers(backbone)
    assert "logit_scale" not in converted and heads == {}
    with pytest.raises(
        ValueError, match="not part of torchmultimodal's FLAVA layout: \\['model.extra'\\]"
    ):
        zoo.torchmultimodal_to_transformers({**state, "model.extra": torch.zeros(1)})


def test_torchmultimodal_parity():
    """Outputs equal torchmultimodal's own model (needs the interop extra)."""
    mm = pytest.importorskip("torchmultimodal.models.flava.model")
    import torch.nn.functional as F

    from flava_zoo.interop import convert_transformers_flava_state_dict

    config = tmm_config()
    theirs = mm.flava_model(
        image_hidden_size=64,
        image_num_attention_heads=4,
        image_num_hidden_layers=2,
        image_intermediate_size=128,
        image_size=32,
        patch_size=8,
        text_hidden_size=48,
        text_num_attention_heads=4,
        text_num_hidden_layers=2,
        text_intermediate_size=96,
        vocab_size=200,
        max_position_embeddings=32,
        multimodal_hidden_size=56,
        multimodal_num_attention_heads=4,
        multimodal_num_hidden_layers=2,
        multimodal_intermediate_size=112,
        text_and_image_proj_size=32,
    ).eval()
    backbone, _ = zoo.torchmultimodal_to_transformers(theirs.state_dict())
    backbone["logit_scale"] = torch.tensor(config.logit_scale_init)
    ours = flava_zoo.FlavaModel(config).eval()
    ours.load_state_dict(convert_transformers_flava_state_dict(backbone, config).model)
    inputs = batch(config)
    with torch.no_grad():
        image, image_proj = theirs.encode_image(inputs["pixel_values"], projection=True)
        text, text_proj = theirs.encode_text(inputs["input_ids"], projection=True)
        fused = theirs.encode_mm(image.hidden_states[-1], text.hidden_states[-1])
        out = ours(**inputs)
    assert torch.allclose(out.image.last_hidden_state, image.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.text.last_hidden_state, text.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.multimodal.last_hidden_state, fused.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.image.embedding, F.normalize(image_proj, dim=-1), atol=1e-6)
    assert torch.allclose(out.text.embedding, F.normalize(text_proj, dim=-1), atol=1e-6)


def test_cli_list_and_info(capsys):
    assert zoo_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "flava-base.facebook" in out and "transformers" in out
    assert zoo_main(["info", "flava-base.facebook"]) == 0
    out = capsys.readouterr().out
    assert "hf://facebook/flava-full@main/pytorch_model.bin" in out
    assert "trust on first use" in out and "arxiv.org/abs/2112.04482" in out
    assert zoo_main(["info", "flava-base.facebook", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"]["weights"]["cached"] is False
    assert zoo_main(["info", "nope.nope"]) == 1
    assert "no pretrained weights called 'nope.nope'" in capsys.readouterr().err
