"""The demo's before/after table: caption metrics (fractions) shown x 100, accuracies (percentages) as they are."""
from unival.demo import print_table


def table_lines(capsys, before, after):
    print_table({"scores": before, "skipped": {}}, {"scores": after, "skipped": {}})
    return [line for line in capsys.readouterr().out.splitlines() if line]


def test_accuracies_are_printed_as_they_are(capsys):
    lines = table_lines(capsys, {"Acc@0.5": 0.0, "Acc@0.5 small": 0.0}, {"Acc@0.5": 36.49, "Acc@0.5 small": 0.0})
    assert lines[2].split("|")[2].strip() == "36.5"
    assert lines[-1] == "(percent)"


def test_caption_metrics_are_scaled_to_percent(capsys):
    lines = table_lines(capsys, {"CIDEr": 0.0, "BLEU-4": 0.0}, {"CIDEr": 2.568, "BLEU-4": 0.626})
    rows = {line.split("|")[0].strip(): line.split("|")[2].strip() for line in lines[2:-1]}
    assert rows == {"CIDEr": "256.8", "BLEU-4": "62.6"}
    assert lines[-1] == "(percent; caption scores x 100)"
