"""The evaluations end to end on a real local Ray: Ray Data embedding, retrieval, zero-shot, linear probe, the job.

Oracle for every Ray run: the same tiny model run in this process, plus the brute-force / scikit-learn computations.
"""
import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import boto3
import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from biomedclip.evaluate import EvaluateConfig, ZeroShotTask, load_task, run_linear_probe, run_retrieval, run_zeroshot
from biomedclip.evaluate.datasets import DataConfig, folder_dataset
from biomedclip.evaluate.embed import EmbedConfig, embed_pairs
from biomedclip.evaluate.linear_probe import LinearProbeConfig, stratified_split, stratified_subset
from biomedclip.evaluate.runs import RetrievalConfig, task_data_format
from biomedclip.inference import Predictor
from biomedclip.io.transfer import download_dir, upload_dir
from biomedclip.model import ModelConfig, TextConfig, VisionConfig, build_model, eval_transform
from biomedclip.model.artifact import load_artifact, save_artifact
from biomedclip.model.export import export_open_clip
from biomedclip.pmc.schema import PAIR_SCHEMA
from tests.helpers import load_job, open_clip_model, roco_captions, train_tokenizer
from tests.test_eval_datasets import LUNG
from tests.test_eval_retrieval import brute_force_ranks

REPO = Path(__file__).resolve().parent.parent
EVALUATE = load_job("evaluate")
# (image under realdata/images, caption): the captions name the modality, as PMC captions do.
FIGURES = [
    ("xray/nih_cxr14_00000001_000.png", "Chest radiograph (X-ray) showing cardiomegaly."),
    ("xray/nih_cxr14_00027426_000.png", "Frontal chest radiograph with a right lower lobe opacity."),
    ("xray/tbx11k/imgs/tb/tb0005.png", "Chest X-ray of a patient with pulmonary tuberculosis."),
    ("ct/vqarad_synpic22794.jpg", "Axial CT of the abdomen with a hypodense liver lesion."),
    ("mri/vqarad_synpic51212.jpg", "Brain MRI, T2-weighted, axial."),
    ("histopathology/lungaca1.jpeg", "H&E stained section of lung adenocarcinoma."),
    ("histopathology/lungscc1.jpeg", "Histology of squamous cell carcinoma, H&E, x200."),
    ("histopathology/skimage_ihc.png", "Immunohistochemistry of colon tissue, histopathology."),
    ("microscopy/skimage_cell_qpi.png", "Quantitative phase image of a fluorescent labelled cell."),
    ("charts/bjmbr_pie_chart_g5500i04.jpg", "Pie chart of the distribution of genotypes."),
    ("charts/bjmbr_phylogenetic_tree_g5500i03.jpg", "Phylogenetic tree of the isolates."),
]


def jpeg_bytes(path: Path) -> bytes:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((256, 256))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pair_row(index: int, caption: str, image: bytes) -> dict:
    return {"pmcid": f"PMC{1000 + index}", "pmid": None, "fig_id": "F1", "label": "Figure 1", "caption": caption,
            "inline_refs": "", "image": image, "width": 256, "height": 256, "orig_width": 512, "orig_height": 512,
            "license": "CC BY", "split": "test", "sha256": hashlib.sha256(image).hexdigest(), "doi": None}


@pytest.fixture(scope="module")
def artifact(realdata, tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = train_tokenizer(roco_captions(realdata) + [caption for _, caption in FIGURES])
    config = ModelConfig(embed_dim=64, vision=VisionConfig("vit-tiny", 224),
                         text=TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size))
    return save_artifact(build_model(config).eval(), tokenizer, tmp_path_factory.mktemp("artifact"))


@pytest.fixture(scope="module")
def pairs_root(realdata, tmp_path_factory):
    """An extraction output root with a test split of real images, plus one figure whose bytes are not an image."""
    rows = [pair_row(i, caption, jpeg_bytes(realdata / "images" / name)) for i, (name, caption) in enumerate(FIGURES)]
    rows.append(pair_row(len(FIGURES), "Chest radiograph, corrupted upload.", b"\xff\xd8 not a jpeg"))
    rows.append(pair_row(len(FIGURES) + 1, rows[0]["caption"], rows[3]["image"]))  # a duplicate caption
    root = tmp_path_factory.mktemp("pairs")
    (root / "test").mkdir()
    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    pq.write_table(table.slice(0, 7), root / "test" / "part-00000.parquet")
    pq.write_table(table.slice(7), root / "test" / "part-00001.parquet")
    return root


def direct_image_features(artifact_dir: Path, images: list[Image.Image]) -> np.ndarray:
    model, _ = load_artifact(artifact_dir)
    transform = eval_transform(model.config.vision.image_size)
    with torch.no_grad():
        return model.encode_image(torch.from_numpy(np.stack([transform(image) for image in images]))).numpy()


def direct_pair_features(artifact_dir: Path, root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys, image and text features of the decodable rows, computed in this process, in pmcid/fig_id order."""
    table = pq.read_table(root / "test").to_pylist()
    rows = sorted((r for r in table if r["image"].startswith(b"\xff\xd8\xff")), key=lambda r: r["pmcid"])
    model, tokenizer = load_artifact(artifact_dir)
    images = direct_image_features(artifact_dir, [Image.open(io.BytesIO(r["image"])) for r in rows])
    with torch.no_grad():
        texts = model.encode_text(tokenizer([r["caption"] for r in rows])).numpy()
    for i, row in enumerate(rows):  # identical captions share the first copy's embedding (see embed_pairs)
        texts[i] = texts[[r["caption"] for r in rows].index(row["caption"])]
    return [f"{r['pmcid']}/{r['fig_id']}" for r in rows], images, texts


def test_ray_embedding_equals_the_model_in_process(ray_session, artifact, pairs_root):
    embedded = embed_pairs(artifact, pairs_root / "test", EmbedConfig(batch_size=4))
    keys, images, texts = direct_pair_features(artifact, pairs_root)
    assert embedded.keys == keys
    np.testing.assert_allclose(embedded.images, images, atol=1e-5)
    np.testing.assert_allclose(embedded.texts, texts, atol=1e-5)
    assert [p.name for p in embedded.problems] == [f"PMC{1000 + len(FIGURES)}/F1"]
    assert "unreadable image" in embedded.problems[0].reason


def on_s3(s3_server: str, monkeypatch, prefix: str, **folders: Path) -> dict[str, str]:
    """Each local folder uploaded to s3://eval/<prefix>/<name> (and where to write: `out`), reached through
    $AWS_ENDPOINT_URL alone (actors' environment was fixed before: the job passes the driver's on)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    boto3.client("s3").create_bucket(Bucket="eval")
    root = f"s3://eval/{prefix}"
    for name, folder in folders.items():
        upload_dir(folder, f"{root}/{name}")
    return {name: f"{root}/{name}" for name in [*folders, "out"]}


def test_retrieval_report_equals_brute_force(ray_session, artifact, pairs_root, tmp_path, s3_server, monkeypatch):
    """Model, pairs and report all on S3 (the report is the one on S3)."""
    uris = on_s3(s3_server, monkeypatch, tmp_path.name, artifact=artifact, pairs=pairs_root)
    config = EvaluateConfig(retrieval=RetrievalConfig(chunk_size=3), embed=EmbedConfig(batch_size=5))
    report = run_retrieval(uris["artifact"], uris["pairs"], config, output_dir=uris["out"])
    assert report["data"] == f"{uris['pairs']}/test"
    download_dir(uris["out"], tmp_path)
    _, images, texts = direct_pair_features(artifact, pairs_root)
    image_ranks, text_ranks = brute_force_ranks(images, texts)
    metrics = report["metrics"]
    assert metrics["n"] == len(FIGURES) + 1
    for k in (1, 5, 10):
        assert metrics["image_to_text"][f"R@{k}"] == pytest.approx(np.mean(image_ranks <= k))
        assert metrics["text_to_image"][f"R@{k}"] == pytest.approx(np.mean(text_ranks <= k))
    assert metrics["image_to_text"]["median_rank"] == np.median(image_ranks)
    assert report["skipped_count"] == 1
    assert json.loads((tmp_path / "retrieval.json").read_text())["metrics"] == metrics
    assert (tmp_path / "retrieval_recall.png").stat().st_size > 0
    assert "PMC1011/F1" in (tmp_path / "retrieval_skipped.txt").read_text()


def test_zeroshot_on_lc25000_reports_bad_files_and_unknown_labels(ray_session, artifact, realdata, tmp_path):
    data = tmp_path / "lung_image_sets"
    shutil.copytree(realdata / LUNG, data)
    (data / "lung_n" / "lungn9.jpeg").write_bytes(b"not an image")
    (data / "colon_n").mkdir()
    shutil.copy(realdata / LUNG / "lung_n" / "lungn1.jpeg", data / "colon_n" / "colonn1.jpeg")
    report = run_zeroshot(artifact, data, "lc25000-lung", output_dir=tmp_path / "out")

    task = load_task("lc25000-lung")
    dataset = folder_dataset(realdata / LUNG)
    features = direct_image_features(artifact, [dataset.load_image(i) for i in range(len(dataset.samples))])
    predicted = (features @ Predictor.load(artifact).label_features(task.class_names, task.templates).T).argmax(1)
    truth = [task.class_index(s.label) for s in dataset.samples]
    assert report["metrics"]["n"] == 12
    assert report["metrics"]["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    skipped = "\n".join(report["skipped"])
    assert report["skipped_count"] == 2
    assert f"{data / 'lung_n' / 'lungn9.jpeg'}: unreadable image" in skipped
    assert f"{data / 'colon_n' / 'colonn1.jpeg'}: unknown label 'colon_n'" in skipped
    assert (tmp_path / "out" / "zeroshot_lc25000-lung_confusion.png").is_file()


def test_linear_probe_equals_sklearn_on_the_same_features(ray_session, artifact, realdata, tmp_path):
    config = EvaluateConfig(linear_probe=LinearProbeConfig(fractions=[0.34, 1.0]))
    report = run_linear_probe(artifact, realdata / LUNG, config=config, output_dir=tmp_path)
    dataset = folder_dataset(realdata / LUNG)
    features = direct_image_features(artifact, [dataset.load_image(i) for i in range(len(dataset.samples))])
    labels = np.array([["lung_aca", "lung_n", "lung_scc"].index(s.label) for s in dataset.samples])
    train, test = stratified_split(labels, 0.3, seed=0)
    assert (report["n_train"], report["n_test"]) == (9, 3)
    for fraction in ("0.34", "1"):
        subset = train[stratified_subset(labels[train], float(fraction), seed=0)]
        predicted = LogisticRegression(max_iter=1000).fit(features[subset], labels[subset]).predict(features[test])
        assert report["results"][fraction]["n_train"] == len(subset)
        assert report["results"][fraction]["accuracy"] == pytest.approx(accuracy_score(labels[test], predicted))
    assert (tmp_path / "linear_probe.png").is_file()


def test_job_runs_the_demo_zeroshot_on_caption_keywords(ray_session, artifact, pairs_root, tmp_path, capsys,
                                                        s3_server, monkeypatch):
    """The command line with the model and the report on S3 (URIs reach the job as given, not folded into paths)."""
    uris = on_s3(s3_server, monkeypatch, tmp_path.name, artifact=artifact)
    assert EVALUATE.JOB.main(["--checkpoint", uris["artifact"], "--task", "zeroshot", "--data", str(pairs_root),
                              "--output", "nosuchscheme://x/y"]) == 2
    assert "--output: nosuchscheme://x/y: pyarrow cannot open nosuchscheme:// URIs" in capsys.readouterr().err
    code = EVALUATE.JOB.main(["--checkpoint", uris["artifact"], "--task", "zeroshot",
                              "--data", str(pairs_root / "test"), "--output", uris["out"],
                              "--config", str(REPO / "jobs/configs/evaluate_demo.yaml")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    out = download_dir(uris["out"], tmp_path / "out")
    report = json.loads((out / "zeroshot_pmc-modality.json").read_text())
    # keyword classes of FIGURES: 3 x-ray, 1 CT, 3 histology, 1 fluorescence, 1 chart; the MRI and the tree captions
    # name none; the duplicate-caption row is an x-ray caption; the corrupted row does not decode.
    assert report["metrics"]["n"] == 10
    assert [sum(row) for row in report["metrics"]["confusion_matrix"]] == [4, 1, 3, 1, 1]
    assert report["skipped_count"] == 3
    assert "PMC1004/F1: caption mentions no class keyword" in report["skipped"]
    assert "pmc-modality: accuracy" in printed and "recall h&e histology" in printed
    assert (out / "zeroshot_pmc-modality_confusion.png").is_file()


def test_job_refuses_a_bad_config_by_key(artifact, pairs_root, capsys):
    code = EVALUATE.JOB.main(["--checkpoint", str(artifact), "--task", "retrieval", "--data", str(pairs_root),
                          "--set", "retrieval.chunk_size=0"])
    assert code == 2
    assert "retrieval" in capsys.readouterr().err


@pytest.fixture(scope="module")
def open_clip_dir(artifact, tmp_path_factory):
    """The test artifact as an open_clip BiomedCLIP directory (open_clip_config.json + weights + tokenizer)."""
    return export_open_clip(*load_artifact(artifact), tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def labelled_csv(realdata, tmp_path_factory):
    """A path,label CSV of real LC25000 lung images plus three bad rows: a missing file, bytes that are not an
    image, and a label no task or training set knows."""
    folder = tmp_path_factory.mktemp("csv")
    (folder / "broken.jpeg").write_bytes(b"\xff\xd8 not a jpeg")
    lung = realdata / LUNG
    rows = [(lung / "lung_aca" / f"lungaca{i}.jpeg", "lung_aca") for i in range(1, 5)]
    rows += [(lung / "lung_n" / f"lungn{i}.jpeg", "lung_n") for i in range(1, 5)]
    rows += [(lung / "lung_scc" / "lungscc1.jpeg", "lung_scc"), (lung / "lung_n" / "lungn1.jpeg", "colon_n"),
             ("gone.png", "lung_n"), ("broken.jpeg", "lung_aca")]
    path = folder / "labels.csv"
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def csv_problems(path: Path) -> dict[str, str]:
    """The bad rows of `labelled_csv`, as the report names them."""
    return {
        "missing": f"{path.parent / 'gone.png'}: file not found (listed at {path}:12)",
        "unreadable": f"{path.parent / 'broken.jpeg'}: unreadable image",
        "unknown": "lungn1.jpeg: unknown label 'colon_n'",
    }


def known_rows(path: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    """Images and class indices of the CSV rows that exist, decode and carry one of `labels`."""
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    rows = [(Path(p), label) for p, label in rows if label in labels and Path(p).is_absolute()]
    return [p for p, _ in rows], np.array([labels.index(label) for _, label in rows])


def test_job_zeroshot_on_an_open_clip_checkpoint_equals_open_clip(ray_session, open_clip_dir, labelled_csv,
                                                                   tmp_path, capsys):
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("lung-binary:\n  format: csv\n  primary_metric: auroc\n"
                     "  templates: ['this is an image of {}', '{} presented in image']\n"
                     "  classes: {lung_n: normal lung tissue, lung_aca: lung adenocarcinomas}\n")
    out = tmp_path / "out"
    code = EVALUATE.JOB.main(["--checkpoint", str(open_clip_dir), "--task", "zeroshot", "--data", str(labelled_csv),
                          "--set", "zeroshot.task=lung-binary", "--set", f"zeroshot.tasks_file={tasks}",
                          "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "zeroshot_lung-binary.json").read_text())

    # oracle: open_clip itself, on the same directory, with its own preprocessing and zero-shot classifier
    reference, _, preprocess = open_clip_model(open_clip_dir)
    reference.eval()
    task = load_task("lung-binary", tasks)
    paths, truth = known_rows(labelled_csv, task.labels)
    with torch.no_grad():
        features = reference.encode_image(torch.stack([preprocess(Image.open(p)) for p in paths]), normalize=True)
        weights = build_zero_shot_classifier(reference, open_clip.get_tokenizer(f"local-dir:{open_clip_dir}"),
                                             task.class_names, task.templates)
    logits = (features @ weights).numpy()
    predicted = logits.argmax(axis=1)
    metrics = report["metrics"]
    assert metrics["n"] == len(truth) == 8
    assert metrics["confusion_matrix"] == confusion_matrix(truth, predicted, labels=[0, 1]).tolist()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert report["primary"] == metrics["auroc"] == pytest.approx(roc_auc_score(truth, logits[:, 1] - logits[:, 0]))
    problems = csv_problems(labelled_csv)
    skipped = "\n".join(report["skipped"])
    assert report["skipped_count"] == 4
    assert problems["missing"] in skipped and "unknown label 'lung_scc'" in skipped
    assert problems["unreadable"] in skipped and problems["unknown"] in skipped
    assert "AUROC" in printed and (out / "zeroshot_lung-binary_confusion.png").is_file()


def test_job_linear_probe_on_separate_test_data_equals_sklearn(ray_session, artifact, realdata, labelled_csv,
                                                               tmp_path, capsys):
    out = tmp_path / "out"
    code = EVALUATE.JOB.main(["--checkpoint", str(artifact), "--task", "linear-probe", "--data", str(realdata / LUNG),
                          "--test-data", str(labelled_csv), "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "linear_probe.json").read_text())

    classes = ["lung_aca", "lung_n", "lung_scc"]
    train = folder_dataset(realdata / LUNG)
    train_x = direct_image_features(artifact, [train.load_image(i) for i in range(len(train.samples))])
    train_y = np.array([classes.index(s.label) for s in train.samples])
    paths, test_y = known_rows(labelled_csv, classes)
    test_x = direct_image_features(artifact, [Image.open(p) for p in paths])
    assert report["classes"] == classes and (report["n_train"], report["n_test"]) == (12, 9)
    assert list(report["results"]) == ["0.01", "0.1", "1"]  # the default 1%, 10%, 100% of the training labels
    for fraction, result in report["results"].items():
        subset = stratified_subset(train_y, float(fraction), seed=0)
        predicted = LogisticRegression(max_iter=1000).fit(train_x[subset], train_y[subset]).predict(test_x)
        assert result["n_train"] == len(subset) == (3 if fraction != "1" else 12)
        assert result["accuracy"] == pytest.approx(accuracy_score(test_y, predicted))
        assert result["macro_f1"] == pytest.approx(f1_score(test_y, predicted, average="macro"))
    problems = csv_problems(labelled_csv)
    assert report["skipped_count"] == 3
    assert all(problem in "\n".join(report["skipped"]) for problem in problems.values())
    assert (out / "linear_probe_skipped.txt").read_text().count("\n") == 3
    assert "100% of labels (12 examples)" in printed and (out / "linear_probe.png").is_file()


def test_an_explicit_data_format_wins_over_the_tasks(tmp_path):
    task = load_task("lc25000-lung")
    config = EvaluateConfig()
    assert task_data_format(task, tmp_path, config) == "folder"
    config = dataclasses.replace(config, data=DataConfig(format="csv"))
    assert task_data_format(task, tmp_path, config) == "csv"
    (tmp_path / "labels.csv").write_text("path,label\n")
    free = ZeroShotTask(templates=["{}"], classes={"a": "x", "b": "y"})
    assert task_data_format(free, tmp_path / "labels.csv", EvaluateConfig()) == "csv"
