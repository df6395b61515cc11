"""Our BiomedCLIP against open_clip (the oracle): same names, same outputs, same preprocessing, same tokens."""
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from biomedclip.model import build_model, eval_transform, load_model, save_checkpoint
from biomedclip.model.artifact import load_artifact
from biomedclip.model.export import export_open_clip
from tests.helpers import open_clip_model, real_images, roco_captions, tiny_config, train_tokenizer

BIOMEDCLIP_NAMES = ("visual.trunk.", "visual.head.proj.weight", "text.transformer.", "text.proj.0.weight",
                    "text.proj.2.weight", "logit_scale")


@pytest.fixture(scope="module")
def exported(realdata, tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = train_tokenizer(roco_captions(realdata))
    model = build_model(tiny_config(tokenizer)).eval()
    directory = export_open_clip(model, tokenizer, tmp_path_factory.mktemp("export"))
    reference, _, preprocess = open_clip_model(directory)
    return model, tokenizer, directory, reference.eval(), preprocess


def test_state_dict_names_are_open_clips(exported):
    model, _, _, reference, _ = exported
    ours = set(model.state_dict())
    assert ours == set(reference.state_dict())
    assert all(name.startswith(BIOMEDCLIP_NAMES) for name in ours)
    assert not any("pooler" in name for name in ours)


def test_preprocessing_equals_open_clips_on_real_images(exported, realdata):
    model, _, _, _, preprocess = exported
    transform = eval_transform(model.config.vision.image_size)
    for path in real_images(realdata):
        with Image.open(path) as image:  # greyscale, RGB, palette and 16-bit files among them
            np.testing.assert_allclose(transform(image), preprocess(image).numpy(), rtol=0, atol=1e-6,
                                       err_msg=path.name)


def test_image_features_match_on_real_images(exported, realdata):
    model, _, _, reference, preprocess = exported
    paths = real_images(realdata)
    assert len(paths) >= 10
    transform = eval_transform(model.config.vision.image_size)
    with torch.no_grad():
        for path in paths:
            image = Image.open(path)
            ours = model.encode_image(torch.from_numpy(transform(image))[None])
            theirs = reference.encode_image(preprocess(image)[None], normalize=True)
            assert (ours - theirs).abs().max().item() <= 1e-5, path.name


def test_text_features_match_on_roco_captions(exported, realdata):
    model, tokenizer, directory, reference, _ = exported
    captions = roco_captions(realdata)
    assert len(captions) >= 90
    tokens = tokenizer(captions)
    with torch.no_grad():
        ours = model.encode_text(tokens)
        theirs = reference.encode_text(tokens, normalize=True)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_open_clip_tokenizer_loads_the_exported_vocabulary(exported):
    # open_clip's HFTokenizer also runs ftfy text repair first, so compare on captions that need none.
    _, tokenizer, directory, _, _ = exported
    captions = ["Axial CT of the chest shows a 3 cm nodule.", "H&E stain, x40: lung adenocarcinoma."]
    assert torch.equal(tokenizer(captions), open_clip.get_tokenizer(f"local-dir:{directory}")(captions))


def test_forward_matches_including_logit_scale(exported):
    model, tokenizer, _, reference, _ = exported
    pixels, tokens = torch.randn(2, 3, 224, 224), tokenizer(["an axial ct image", "h&e stain"])
    with torch.no_grad():
        ours = model(pixels, tokens)
        image_features, text_features, logit_scale = reference(pixels, tokens)
    assert torch.allclose(ours["logit_scale"], logit_scale)
    assert torch.allclose(ours["image_features"], image_features, atol=1e-5)
    assert torch.allclose(ours["text_features"], text_features, atol=1e-5)


def test_open_clip_pt_checkpoint_loads_weights_only(exported, tmp_path):
    model, _, _, reference, _ = exported
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    torch.save(wrapped, tmp_path / "epoch_3.pt")
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    pixels = torch.randn(1, 3, 224, 224)
    for name in ("epoch_3.pt", "open_clip_pytorch_model.bin"):
        loaded = load_model(tmp_path / name, model.config).eval()
        assert torch.allclose(loaded.encode_image(pixels), model.encode_image(pixels), atol=1e-6)


def test_artifact_loads_an_open_clip_directory(exported):
    model, tokenizer, directory, _, _ = exported
    loaded, loaded_tokenizer = load_artifact(directory)
    assert loaded.config == model.config
    tokens = tokenizer(["chest radiograph"])
    assert torch.equal(loaded_tokenizer(["chest radiograph"]), tokens)
    assert torch.allclose(loaded.encode_text(tokens), model.encode_text(tokens), atol=1e-6)


def test_safetensors_round_trip_carries_the_config(exported, tmp_path):
    model = exported[0]
    loaded = load_model(save_checkpoint(model, tmp_path / "m.safetensors"))
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
