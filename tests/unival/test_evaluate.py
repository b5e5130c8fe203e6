"""``unival evaluate``: reading predictions and references in every accepted format, errors that name the
file and line, and the command line end to end."""
import json
import math
import subprocess
import sys

import pytest

from unival.cli import main as cli_main
from unival.evaluate import (ROW, InputError, evaluate_caption_predictions, read_predictions, read_references,
                             results_table)

# fairseq-generate output as it prints it: log lines, then per sample S-, T-, H-, D- and P- lines, in the
# order batches finish; with --nbest 2 the second hypothesis of a sample follows the best one.
GENERATE_OUTPUT = """\
2024-05-01 10:00:00 | INFO | fairseq_cli.generate | loading model(s) from checkpoint_best.pt
S-1\t<image> what does the image describe?
T-1\ta blue square next to a green circle&&a green circle beside a blue square
H-1\t-0.3125\t50 1234 5678
D-1\t-0.3125\ta blue square next to a green circle
P-1\t-0.1000 -0.2000 -0.6375
H-1\t-0.9000\t50 1234
D-1\t-0.9000\ta blue square
S-0\t<image> what does the image describe?
T-0\ta red circle above a yellow triangle
H-0\t-0.2500\ta red circle above a yellow triangle
D-0\t-0.2500\ta red circle above a yellow triangle
S-2\t<image> what does the image describe?
T-2\ttwo small purple stars on a white background
H-2\t-1.5000\t
D-2\t-1.5000\t
2024-05-01 10:00:05 | INFO | fairseq_cli.generate | Translated 3 sentences (30 tokens) in 0.5s
"""

TSV_ROWS = [
    ["img0-cap", "100", "a red circle above a yellow triangle&&a yellow triangle under a red circle", "", "BASE64"],
    ["img1-cap", "101", "a blue square next to a green circle", "", "BASE64"],
    ["img2-cap", "102", "two small purple stars on a white background", "", "BASE64"],
]


def write_tsv(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVAL_CACHE_DIR", str(tmp_path / "user_cache"))


@pytest.fixture
def generate_file(tmp_path):
    path = tmp_path / "generate-test.txt"
    path.write_text(GENERATE_OUTPUT, encoding="utf-8")
    return path


def test_generate_output_prefers_detokenized_best_hypothesis(generate_file):
    predictions = read_predictions(str(generate_file))
    assert predictions.id_kind == ROW
    assert predictions.values == {"1": "a blue square next to a green circle",
                                    "0": "a red circle above a yellow triangle", "2": ""}
    assert predictions.targets == {"1": ["a blue square next to a green circle", "a green circle beside a blue square"],
                                   "0": ["a red circle above a yellow triangle"],
                                   "2": ["two small purple stars on a white background"]}


def test_generate_output_falls_back_to_h_lines(tmp_path):
    path = tmp_path / "generate.txt"
    path.write_text("H-7\t-0.5\ta cat on a mat\nH-8\t-0.7\n", encoding="utf-8")
    assert read_predictions(str(path)).values == {"7": "a cat on a mat", "8": ""}


@pytest.mark.parametrize("bad_line", ["H-3 -0.5 a cat", "H-3\tnot-a-score\ta cat", "D-\t-0.5\ta cat"])
def test_unparsable_hypothesis_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "generate.txt"
    path.write_text(f"S-3\tsource\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{path}:2: {bad_line[0]}- line does not parse"):
        read_predictions(str(path))


def test_file_that_is_neither_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(InputError, match="neither a JSON list of predictions nor fairseq-generate output"):
        read_predictions(str(path))


def test_json_predictions(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps([{"image_id": 100, "caption": "a red circle"}, {"image_id": "101", "caption": ""}]))
    predictions = read_predictions(str(path))
    assert (predictions.id_kind, predictions.values) == ("image_id", {"100": "a red circle", "101": ""})


@pytest.mark.parametrize("items, line, message", [
    ([{"id": 1, "caption": "a"}, {"id": 2, "text": "b"}], 6, "prediction 1: expected an object with"),
    ([{"id": 1, "caption": "a"}, {"id": 1, "caption": "b"}], 6, "a second prediction for id '1'"),
    ([{"id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}], 6, "identified by 'image_id' while earlier"),
    ([{"id": 1, "caption": "a"}, {"id": 2, "caption": 3}], 6, "\"caption\" must be a string, got 3"),
    ([{"id": 1, "caption": "a"}, "b"], 6, "prediction 1: expected an object"),
])
def test_bad_json_predictions_name_file_and_line(tmp_path, items, line, message):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(items, indent=2))
    with pytest.raises(InputError) as caught:
        read_predictions(str(path))
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in str(caught.value)


def test_invalid_json_and_json_object_predictions(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text('[\n  {"id": 1, "caption": "a"},\n  {"id": 2 "caption": "b"}\n]')
    with pytest.raises(InputError, match=rf"^{path}:3: invalid JSON: Expecting ','"):
        read_predictions(str(path))
    path.write_text('{"1": "a"}')
    with pytest.raises(InputError, match="expected a JSON list of"):
        read_predictions(str(path))


@pytest.mark.parametrize("id_kind, keys", [("id", ["img0-cap", "img1-cap", "img2-cap"]),
                                           ("image_id", ["100", "101", "102"]), (ROW, ["0", "1", "2"])])
def test_tsv_references_split_on_separator(tmp_path, id_kind, keys):
    path = write_tsv(tmp_path / "caption_test.tsv", TSV_ROWS)
    references = read_references(str(path), id_kind)
    assert list(references) == keys
    assert references[keys[0]] == ["a red circle above a yellow triangle", "a yellow triangle under a red circle"]
    assert references[keys[2]] == ["two small purple stars on a white background"]


def test_tsv_rows_of_one_image_are_merged(tmp_path):
    rows = [["1", "100", "a red circle", "", "x"], ["2", "100", "a round red shape&&a red circle", "", "x"]]
    path = write_tsv(tmp_path / "caption_train.tsv", rows)
    assert read_references(str(path), "image_id") == {"100": ["a red circle", "a round red shape"]}


def test_tsv_errors_name_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "bad.tsv", [TSV_ROWS[0], TSV_ROWS[1][:4]])
    with pytest.raises(ValueError, match=rf"^{path}:2: expected 5 columns, got 4"):
        read_references(str(path), "id")
    path = write_tsv(tmp_path / "four.tsv", [row[:4] for row in TSV_ROWS])
    with pytest.raises(InputError, match=rf"^{path}:1: a caption TSV has 5 columns .* this line has 4"):
        read_references(str(path), "id")
    path = write_tsv(tmp_path / "empty_caption.tsv", [TSV_ROWS[0], ["x", "1", " && ", "", "img"]])
    with pytest.raises(InputError, match=rf"^{path}:2: no reference caption"):
        read_references(str(path), "id")


def test_json_and_coco_references(tmp_path):
    plain = tmp_path / "refs.json"
    plain.write_text(json.dumps({"100": ["a red circle", "a round red shape"], "101": ["a blue square"]}))
    assert read_references(str(plain), "id") == {"100": ["a red circle", "a round red shape"], "101": ["a blue square"]}
    coco = tmp_path / "captions_val.json"
    coco.write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 100, "id": 1, "caption": "A red circle."}, {"image_id": 100, "id": 2, "caption": "Red disc"},
        {"image_id": 101, "id": 3, "caption": "A blue square."}]}))
    assert read_references(str(coco), "image_id") == {"100": ["A red circle.", "Red disc"], "101": ["A blue square."]}
    coco.write_text(json.dumps({"annotations": [{"image_id": 100, "caption": "x"}, {"image_id": 101}]}))
    with pytest.raises(InputError, match=rf"^{coco}: annotation 1 must be an object"):
        read_references(str(coco), "image_id")
    plain.write_text(json.dumps({"100": "a red circle"}))
    with pytest.raises(InputError, match=r"references of id '100' must be a list of strings"):
        read_references(str(plain), "id")


def test_evaluate_caption_predictions_result_layout():
    predictions = {"a": "a red circle above a yellow triangle", "b": "a blue square next to a green circle"}
    references = {"a": ["a red circle above a yellow triangle"], "b": ["a green circle beside a blue square"]}
    results = evaluate_caption_predictions(predictions, references, metrics=("BLEU", "CIDEr"))
    assert set(results) == {"task", "num_predictions", "scores", "skipped", "tokenizer"}
    assert (results["task"], results["num_predictions"], results["skipped"]) == ("caption", 2, {})
    assert list(results["scores"]) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"]
    # "a" matches its 7-word reference; 6 of the 8 words of "b" occur in its 7-word reference ("a" twice):
    # 13 clipped matches of 15 words, no brevity penalty (15 words against 14).
    assert results["scores"]["BLEU-1"] == pytest.approx(13 / 15, abs=1e-6)


def test_results_table_is_aligned():
    table = results_table({"task": "caption", "num_predictions": 2, "tokenizer": "t",
                           "scores": {"BLEU-4": 0.5, "CIDEr": 1.25}, "skipped": {"METEOR": "no java"}})
    assert table.splitlines() == ["caption: 2 predictions, tokenizer: t", "metric  score", "BLEU-4  0.5000",
                                  "CIDEr   1.2500", "METEOR  skipped: no java"]


# --------------------------------------------------------------------------------------------- command line

def test_cli_generate_output_against_tsv(tmp_path, generate_file, capsys):
    references = write_tsv(tmp_path / "caption_test.tsv", TSV_ROWS)
    output = tmp_path / "out" / "results.json"
    code = cli_main(["evaluate", "--predictions", str(generate_file), "--references", str(references),
                     "--metrics", "BLEU", "CIDEr", "--output", str(output)])
    assert code == 0
    results = json.loads(output.read_text())
    assert (results["task"], results["num_predictions"], results["skipped"]) == ("caption", 3, {})
    # Rows 0 and 1 are predicted exactly (7 and 8 words), row 2 is empty: all 15 words match, and the
    # references' 7 + 8 + 8 words give the brevity penalty exp(1 - 23 / 15).
    assert results["scores"]["BLEU-1"] == pytest.approx(math.exp(1 - 23 / 15), abs=1e-6)
    # video and audio captions are scored alike, and named as what they are
    assert cli_main(["evaluate", "--task", "audio_caption", "--predictions", str(generate_file), "--references",
                     str(references), "--metrics", "BLEU", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["task"] == "audio_caption"
    assert 0.0 < results["scores"]["CIDEr"] < 10.0
    printed = capsys.readouterr().out
    assert "caption: 3 predictions" in printed and f"wrote {output}" in printed
    assert any(line.startswith("BLEU-4  ") for line in printed.splitlines())


def test_cli_takes_references_from_target_lines(tmp_path, generate_file, caplog):
    output = tmp_path / "results.json"
    code = cli_main(["evaluate", "--predictions", str(generate_file), "--metrics", "ROUGE_L", "--output", str(output)])
    assert code == 0
    assert "each prediction is scored against one reference; pass --references" in caplog.text
    # Samples 0 and 1 match a reference exactly; sample 2 is empty.
    assert json.loads(output.read_text())["scores"]["ROUGE_L"] == pytest.approx(2 / 3, abs=1e-12)


def test_cli_only_predicted_ids(tmp_path):
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{"image_id": 101, "caption": "a blue square next to a green circle"}]))
    references = write_tsv(tmp_path / "caption_test.tsv", TSV_ROWS)
    args = ["evaluate", "--predictions", str(predictions), "--references", str(references), "--metrics", "ROUGE_L"]
    assert cli_main(args) == 2
    output = tmp_path / "results.json"
    assert cli_main(args + ["--only-predicted-ids", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["scores"]["ROUGE_L"] == pytest.approx(1.0)


def test_cli_reports_malformed_input_with_file_and_line(tmp_path, capsys):
    predictions = tmp_path / "generate.txt"
    predictions.write_text("S-0\tsource\nT-0\ta cat\nH-0\tbroken\n", encoding="utf-8")
    assert cli_main(["evaluate", "--predictions", str(predictions)]) == 2
    assert f"unival evaluate: error: {predictions}:3: H- line does not parse" in capsys.readouterr().err


def test_cli_missing_predictions_are_named(tmp_path, capsys):
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{"id": "img0-cap", "caption": "a red circle"}]))
    references = write_tsv(tmp_path / "caption_test.tsv", TSV_ROWS)
    assert cli_main(["evaluate", "--predictions", str(predictions), "--references", str(references)]) == 2
    assert "no prediction for 2 of 3 reference ids: 'img1-cap', 'img2-cap'" in capsys.readouterr().err


def test_cli_unknown_tasks_are_refused(capsys):
    with pytest.raises(SystemExit) as caught:
        cli_main(["evaluate", "--task", "nonsense", "--predictions", "p.json"])
    assert caught.value.code == 2
    assert "no evaluation for 'nonsense' (available: caption," in capsys.readouterr().err


VQA_ROWS = [["q1", "100", "what colour is it?", "1.0|!+red&&0.3333|!+dark red", "", "BASE64"],
            ["q2", "100", "how many?", "1.0|!+two&&0.6|!+2", "", "BASE64"],
            ["q3", "101", "is it round?", "1.0|!+yes", "", "BASE64"]]


def vqa_accuracy(tmp_path, rows, answers):
    """`unival evaluate --task vqa_gen` of JSON predictions (question id -> answer) against a TSV of ``rows``."""
    references = write_tsv(tmp_path / "vqa_test.tsv", rows)
    predictions = tmp_path / "answers.json"
    predictions.write_text(json.dumps([{"question_id": key, "answer": answer} for key, answer in answers.items()]))
    output = tmp_path / "results.json"
    assert cli_main(["evaluate", "--task", "vqa_gen", "--predictions", str(predictions), "--references",
                     str(references), "--output", str(output)]) == 0
    return json.loads(output.read_text())["scores"]["accuracy"]


def test_vqa_accuracy_of_json_predictions(tmp_path):
    accuracy = vqa_accuracy(tmp_path, VQA_ROWS, {"q1": "dark red", "q2": "2", "q3": "no"})
    # "2" matches "2" (0.6) and "two", which normalises to "2" (1.0): the higher counts
    assert accuracy == pytest.approx(100 * (0.3333 + 1.0 + 0) / 3)


def test_vqa_answers_are_normalised_as_the_official_evaluation_does(tmp_path):
    """Case, punctuation, number words and articles, on both sides (a reference TSV need not be normalised)."""
    rows = [row[:3] + [answers] + row[4:] for row, answers in
            zip(VQA_ROWS, ["1.0|!+Red&&0.3333|!+dark red", "1.0|!+two&&0.6|!+2", "1.0|!+the top"])]
    accuracy = vqa_accuracy(tmp_path, rows, {"q1": "RED", "q2": "2.", "q3": "Top"})
    assert accuracy == pytest.approx(100.0)  # "2" takes two's 1.0


def test_saved_predictions_write_numeric_ids_as_numbers(tmp_path):
    from unival.evaluate import EVALUATORS, save_predictions
    save_predictions(str(tmp_path / "p.json"), {"262148000": "yes", "0": "no", "007": "two", "q4": "three",
                                                "\u00b2": "four"}, EVALUATORS["vqa_gen"])
    saved = json.loads((tmp_path / "p.json").read_text())
    assert [item["question_id"] for item in saved] == [262148000, 0, "007", "q4", "\u00b2"]  # the official ints


def test_vqa_accuracy_of_generate_output_by_row(tmp_path):
    references = write_tsv(tmp_path / "vqa_test.tsv", VQA_ROWS)
    generated = tmp_path / "gen.txt"
    generated.write_text("D-0\t-0.1\tred\nD-2\t-0.2\tyes\nD-1\t-0.3\tthree\n")
    output = tmp_path / "results.json"
    assert cli_main(["evaluate", "--task", "vqa_gen", "--predictions", str(generated), "--references",
                     str(references), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["scores"]["accuracy"] == pytest.approx(100 * 2 / 3)


def test_entailment_accuracy_maps_snli_labels(tmp_path, capsys):
    rows = [["1", "7", "IMG", "a dog runs", "a dog", "entailment"], ["2", "7", "IMG", "a cat", "a dog", "no"],
            ["3", "8", "IMG", "it is heavy", "a box", "neutral"], ["4", "8", "IMG", "x", "y", "contradiction"]]
    references = write_tsv(tmp_path / "snli_ve_test.tsv", rows)
    predictions = tmp_path / "p.json"
    predictions.write_text(json.dumps([{"id": i, "answer": a} for i, a in
                                       [("1", "yes"), ("2", "no"), ("3", "yes"), ("4", "maybe")]]))
    output = tmp_path / "r.json"
    assert cli_main(["evaluate", "--task", "snli_ve", "--predictions", str(predictions), "--references",
                     str(references), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["scores"] == {"accuracy": 50.0}
    # predictions may name the labels as SNLI does, in any case; an unknown label is refused naming the id
    predictions.write_text(json.dumps([{"id": i, "answer": a} for i, a in
                                       [("1", "Entailment"), ("2", " NO"), ("3", "neutral"), ("4", "Contradiction")]]))
    assert cli_main(["evaluate", "--task", "snli_ve", "--predictions", str(predictions), "--references",
                     str(references), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["scores"] == {"accuracy": 100.0}
    predictions.write_text(json.dumps([{"id": i, "answer": "banana"} for i in "1234"]))
    assert cli_main(["evaluate", "--task", "snli_ve", "--predictions", str(predictions), "--references",
                     str(references)]) == 2
    assert "p.json: prediction '1': label 'banana' is not one of entailment" in capsys.readouterr().err
    rows[1][5] = "perhaps"
    write_tsv(references, rows)
    with pytest.raises(InputError, match=r"snli_ve_test.tsv:2: label 'perhaps' is not one of"):
        from unival.evaluate import entailment_references, read_predictions as read
        entailment_references(type("A", (), {"references": str(references), "task": "snli_ve"}),
                              read(str(predictions), value_key="answer", id_keys=("id",)))


def png_base64(width, height):
    import base64
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_grounding_accuracy_by_size_from_json_and_from_generated_bins(tmp_path, capsys):
    # image 200x100; boxes: 20x20 (small), 60x50 (medium), 150x80 (large)
    image = png_base64(200, 100)
    rows = [["r0", "1", "left", "0,0,20,20", image], ["r1", "1", "middle", "50,25,110,75", image],
            ["r2", "1", "all", "10,10,160,90", image]]
    references = write_tsv(tmp_path / "refcoco_test.tsv", rows)
    predictions = tmp_path / "boxes.json"
    # IoU: 1.0 (hit); 30x50 inside the 60x50 box = 0.5 (hit); a disjoint box (miss)
    predictions.write_text(json.dumps([{"id": "r0", "box": [0, 0, 20, 20]}, {"id": "r1", "box": [50, 25, 80, 75]},
                                       {"id": "r2", "box": [170, 0, 200, 10]}]))
    output = tmp_path / "r.json"
    assert cli_main(["evaluate", "--task", "refcoco", "--predictions", str(predictions), "--references",
                     str(references), "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["scores"] == pytest.approx({"Acc@0.5": 200 / 3, "Acc@0.5 small": 100.0, "Acc@0.5 medium": 100.0,
                                               "Acc@0.5 large": 0.0})
    # fairseq-generate prints bins over the 100x100 resized image: bin k -> k / 999 * 100 resized pixels
    generated = tmp_path / "gen.txt"
    generated.write_text("D-0\t-0.1\t<bin_0><bin_0><bin_100><bin_200>\n"
                         "D-1\t-0.1\t<bin_250> <bin_250> <bin_549> <bin_749>\n"
                         "D-2\t-0.1\t<bin_0><bin_0><bin_10><bin_10>\n")
    command = ["evaluate", "--task", "refcoco", "--predictions", str(generated), "--references", str(references),
               "--output", str(output)]
    assert cli_main(command + ["--num-bins", "1000"]) == 0
    assert json.loads(output.read_text())["scores"]["Acc@0.5"] == pytest.approx(200 / 3)
    # bins are fractions of the sides: the size the model saw does not matter (the option is still accepted)
    assert cli_main(command + ["--num-bins", "1000", "--patch-image-size", "384"]) == 0
    assert json.loads(output.read_text())["scores"]["Acc@0.5"] == pytest.approx(200 / 3)
    # the number of bins does; a default of 1000 scored a 128-bin model's boxes 0.0 without a word
    capsys.readouterr()
    assert cli_main(command) == 2
    assert "needs --num-bins, the number of <bin> tokens of the model" in capsys.readouterr().err
    assert cli_main(command + ["--num-bins", "128"]) == 2
    assert "gen.txt: sample 0: <bin_200> is beyond --num-bins 128" in capsys.readouterr().err


def test_grounding_bins_read_image_sizes_from_the_media_dir(tmp_path):
    """Prepared grounding TSVs name image files relative to the task's --media-dir, which may be anywhere."""
    from PIL import Image
    media = tmp_path / "coco" / "train2014"
    media.mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(media / "a.jpg")
    (tmp_path / "data").mkdir()
    references = write_tsv(tmp_path / "data" / "refcoco_test.tsv", [["r0", "1", "left", "0,0,20,20",
                                                                     "train2014/a.jpg"]])
    generated = tmp_path / "gen.txt"
    generated.write_text("D-0\t-0.1\t<bin_0><bin_0><bin_100><bin_200>\n")
    command = ["evaluate", "--task", "refcoco", "--predictions", str(generated), "--references", str(references),
               "--num-bins", "1000", "--output", str(tmp_path / "r.json")]
    assert cli_main(command) == 2  # beside the TSV: no such image
    assert cli_main(command + ["--media-dir", str(tmp_path / "coco")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["scores"]["Acc@0.5"] == 100.0


@pytest.mark.e2e
def test_python_dash_m_unival_cli_evaluate(tmp_path, generate_file):
    """The installed entry point's module run as a program (a fresh interpreter: seconds to import)."""
    output = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "unival.cli", "evaluate", "--predictions", str(generate_file),
                           "--metrics", "BLEU", "--output", str(output)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "BLEU-4" in done.stdout
    # T- references: samples 0 and 1 exact (7 and 8 words), sample 2 empty against its 8-word reference.
    assert json.loads(output.read_text())["scores"]["BLEU-1"] == pytest.approx(math.exp(1 - 23 / 15), abs=1e-6)


def test_evaluating_a_checkpoint_takes_the_input_options_of_its_training_unless_given():
    from unival.evaluate import adopted_input_options

    trained = {"patch_image_size": 64, "num_frames": 16, "num_bins": 1000, "imagenet_default_mean_and_std": True,
               "tsv_prefix": "caption", "lr": [1e-3]}
    # num_frames: not a caption option; num_bins: the default; tsv_prefix and lr: not options of the inputs
    assert adopted_input_options("caption", trained, []) == ["--patch-image-size", "64",
                                                             "--imagenet-default-mean-and-std"]
    assert adopted_input_options("caption", trained, ["--patch-image-size", "96"]) == [
        "--imagenet-default-mean-and-std"]
    given = ["--patch-image-size=96", "--imagenet-default-mean-and-std"]
    assert adopted_input_options("caption", trained, given) == []
    assert adopted_input_options("video_caption", trained, []) == ["--patch-image-size", "64",
                                                                   "--imagenet-default-mean-and-std",
                                                                   "--num-frames", "16"]
    assert adopted_input_options("caption", {}, []) == []


def test_a_config_of_another_task_is_refused(tmp_path, capsys):
    assert cli_main(["evaluate", "--task", "refcoco", "--checkpoint", str(tmp_path / "model.pt"), "--data",
                     str(tmp_path), "--config", "caption/demo"]) == 2
    assert "--config caption/demo is a config of the caption task, not of --task refcoco" in capsys.readouterr().err


def test_checkpoint_of_another_task_is_noted_and_task_options_are_placed_after_the_dashes(tmp_path, capsys):
    from test_merge import write_checkpoint  # a caption checkpoint of a tiny model

    checkpoint = write_checkpoint(tmp_path / "caption.pt", seed=1)
    data = tmp_path / "data"
    data.mkdir()
    rows = [["r0", "1", "left", "0,0,20,20", png_base64(40, 40)]]
    for split in ("train", "test"):
        write_tsv(data / f"refcoco_{split}.tsv", rows)
    assert cli_main(["evaluate", "--task", "refcoco", "--checkpoint", str(checkpoint), "--data", str(data)]) == 2
    out, err = capsys.readouterr()
    assert "note: the checkpoint was trained on the caption task and is evaluated as refcoco" in out
    assert "the folder has refcoco_train.tsv: pass --tsv-prefix refcoco" in err
    assert err.rstrip().endswith("(task options go after `--`: unival evaluate ... -- --tsv-prefix PREFIX)")
