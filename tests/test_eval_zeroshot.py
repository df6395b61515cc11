"""Zero-shot classifier weights against open_clip's build_zero_shot_classifier, and the task definitions."""
import open_clip
import pytest
import torch
import yaml
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from biomedclip.config import ConfigError
from biomedclip.evaluate.tasks import ZeroShotTask, caption_label, load_task, load_tasks
from biomedclip.inference import Predictor
from biomedclip.model import ModelConfig, TextConfig, VisionConfig, build_model
from biomedclip.model.export import export_open_clip
from tests.helpers import open_clip_model, roco_captions, train_tokenizer

PAPER_TASKS = ("pcam", "lc25000-lung", "lc25000-colon", "tcga-til", "rsna-pneumonia")


@pytest.fixture(scope="module")
def models(realdata, tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = train_tokenizer(roco_captions(realdata) + [t.format(c) for task in load_tasks().values()
                                                           for t in task.templates for c in task.class_names])
    config = ModelConfig(embed_dim=64, vision=VisionConfig("vit-tiny", 224),
                         text=TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size))
    model = build_model(config).eval()
    directory = export_open_clip(model, tokenizer, tmp_path_factory.mktemp("open_clip"))
    reference, _, _ = open_clip_model(directory)
    return Predictor(model, tokenizer), reference.eval(), open_clip.get_tokenizer(f"local-dir:{directory}")


@pytest.mark.parametrize("name", sorted(load_tasks()))
def test_class_weights_equal_open_clip(models, name):
    predictor, reference, reference_tokenizer = models
    task = load_task(name)
    ours = torch.from_numpy(predictor.label_features(task.class_names, task.templates))
    theirs = build_zero_shot_classifier(reference, reference_tokenizer, task.class_names, task.templates)
    assert ours.shape == (len(task.classes), 64)
    torch.testing.assert_close(ours, theirs.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(task.classes)))


def test_scores_are_softmax_of_scaled_similarity(models):
    predictor, _, _ = models
    with torch.no_grad():
        predictor.model.logit_scale.fill_(5.0)  # exp(5) > 100: the temperature is capped at 100
    weights = torch.from_numpy(predictor.label_features(["chest x-ray", "histology"], ["a photo of {}"]))
    features = torch.nn.functional.normalize(torch.randn(5, 64), dim=1).numpy()
    scores = predictor.zero_shot(features, weights.numpy())
    expected = (100.0 * torch.from_numpy(features) @ weights.T).softmax(dim=1)
    torch.testing.assert_close(torch.from_numpy(scores), expected)


def test_paper_tasks_carry_the_paper_prompts():
    tasks = load_tasks()
    assert set(PAPER_TASKS) <= set(tasks)
    assert tasks["pcam"].class_names == ["normal lymph node", "lymph node metastasis"]
    assert tasks["lc25000-lung"].labels == ["lung_aca", "lung_n", "lung_scc"]
    assert tasks["lc25000-colon"].templates == ["a photo of {}", "{} presented in image"]
    assert tasks["tcga-til"].primary_metric == "auroc"
    assert tasks["rsna-pneumonia"].class_index("1") == 1
    assert tasks["rsna-pneumonia"].class_index("2") is None


def test_user_tasks_file_adds_and_replaces(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text("pcam:\n  format: pcam\n  templates: ['{}']\n  classes: {0: benign, 1: tumour}\n"
                    "fundus:\n  format: csv\n  templates: ['a fundus photo showing {}']\n"
                    "  classes: {dr: diabetic retinopathy, normal: a healthy retina}\n")
    tasks = load_tasks(path)
    assert tasks["pcam"].classes == {"0": "benign", "1": "tumour"}  # unquoted YAML ints become labels
    assert tasks["fundus"].class_names == ["diabetic retinopathy", "a healthy retina"]
    assert "lc25000-lung" in tasks
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        load_task("nope", path)


@pytest.mark.parametrize("spec, message", [
    ({"templates": ["a photo of"], "classes": {"a": "x", "b": "y"}}, "exactly one"),
    ({"templates": ["{}"], "classes": {"a": "x"}}, "at least two"),
    ({"templates": ["{}"], "classes": {"a": "x", "b": "x"}}, "distinct"),
    ({"templates": ["{}"], "classes": {"a": "x", "b": "y"}, "format": "parquet"}, "keywords"),
    ({"templates": ["{}"], "classes": {"a": "x", "b": "y"}, "format": "parquet", "keywords": {"c": ["z"]}},
     "keywords.c"),
    ({"templates": ["{}"], "classes": {"a": "x", "b": "y", "c": "z"}, "primary_metric": "auroc"}, "binary"),
])
def test_bad_task_definitions_are_refused(tmp_path, spec, message):
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"mine": spec}))
    with pytest.raises(ConfigError, match=message):
        load_tasks(path)


def test_caption_keywords_give_one_label_or_a_reason():
    task = load_task("pmc-modality")
    assert caption_label(task, "Chest radiograph (X-ray), grayscale, showing one nodule.") == ("xray", "")
    assert caption_label(task, "Axial CT scan, grayscale cross-section of the abdomen.") == ("ct", "")
    assert caption_label(task, "Hematoxylin and eosin (H&E) stained histology section.") == ("histology", "")
    assert caption_label(task, "Confocal image of GFP-tagged cells.") == ("fluorescence", "")
    assert caption_label(task, "Line graph with two curves rising over time.") == ("chart", "")
    assert caption_label(task, "A structure was seen")[0] is None  # 'ct' only as a whole word
    label, why = caption_label(task, "CT and H&E findings")
    assert label is None and "several classes (ct, histology)" in why
    assert caption_label(task, "Patient photograph") == (None, "caption mentions no class keyword")


def test_task_from_code_needs_no_yaml():
    task = ZeroShotTask(templates=["{}"], classes={0: "no", 1: "yes"}, name="mine")
    assert task.labels == ["0", "1"]
