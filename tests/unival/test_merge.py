"""`unival merge` / unival.merge_checkpoints: weight interpolation, soups, EMA weights, precision, the checks that
refuse checkpoints of different networks, and the original's checkpoint format."""
import copy
import dataclasses

import pytest
import torch

import unival
from unival.checkpoint import CheckpointError, placeholder_dictionary, read_checkpoint
from unival.cli import main as cli_main
from unival.merge import interpolation_weights, merge_checkpoints
from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults

FC1 = "encoder.layers.0.fc1.weight"
COUNTER = "encoder.embed_images.bn1.num_batches_tracked"


def tiny_config(**overrides):
    values = architecture_defaults("unival_tiny")
    values.update(encoder_embed_dim=64, decoder_embed_dim=64, encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128,
                  image_bucket_size=8, image_encoder="resnet18", image_encoder_stages=1)
    values.update(overrides)
    return UnivalConfig(**values)


def write_checkpoint(path, seed, counter=0, ema_shift=None, dtype=None, vocabulary=60, **overrides):
    """A checkpoint as fairseq-train writes it with this plugin (our options, optimizer state, run state)."""
    cfg = tiny_config(**overrides)
    torch.manual_seed(seed)
    weights = UnivalModel.from_config(cfg, placeholder_dictionary(vocabulary)).state_dict()
    weights[COUNTER] = torch.tensor(counter)
    if dtype is not None:
        weights = {key: value.to(dtype) if value.is_floating_point() else value for key, value in weights.items()}
    extra = {"train_iterator": {"epoch": 2, "iterations_in_epoch": 0, "version": 2}, "metrics": {}, "val_loss": 1.5}
    if ema_shift is not None:
        extra["ema"] = {key: value + ema_shift if value.is_floating_point() else value for key, value in weights.items()}
    state = {"cfg": {"model": dataclasses.asdict(cfg), "task": {"_name": "caption", "patch_image_size": 64}},
             "model": weights, "extra_state": extra, "criterion": {},
             "optimizer_history": [{"criterion_name": "C", "optimizer_name": "O", "lr_scheduler_state": {},
                                    "num_updates": 7}],
             "last_optimizer_state": {"state": {0: {"exp_avg": torch.ones(3)}}}}
    torch.save(state, path)
    return path


def batch(size=2):
    generator = torch.Generator().manual_seed(1)
    return {"src_tokens": torch.randint(4, 60, (size, 5), generator=generator),
            "src_lengths": torch.full((size,), 5),
            "prev_output_tokens": torch.randint(4, 60, (size, 4), generator=generator),
            "patch_images": torch.randn(size, 3, 32, 32, generator=generator),
            "patch_masks": torch.ones(size, dtype=torch.bool)}


def logits(model):
    with torch.no_grad():
        return model(**batch())[0]


@pytest.fixture
def pair(tmp_path):
    return (write_checkpoint(tmp_path / "a.pt", seed=1, counter=5, ema_shift=0.5),
            write_checkpoint(tmp_path / "b.pt", seed=2, counter=9, ema_shift=-0.25))


def test_interpolation_through_the_command_line(pair, tmp_path, capsys):
    a, b = pair
    assert cli_main(["merge", str(a), str(b), "--weights", "0.8", "--out", str(tmp_path / "m.pt")]) == 0
    assert "0.8 x" in capsys.readouterr().out
    merged, first, second = (read_checkpoint(path)["model"] for path in (tmp_path / "m.pt", a, b))
    torch.testing.assert_close(merged[FC1], 0.8 * first[FC1] + 0.2 * second[FC1])
    assert merged[COUNTER].item() == 5, "integer state is the first checkpoint's"
    model = unival.load_checkpoint(tmp_path / "m.pt")  # a checkpoint like the others
    assert torch.equal(model.state_dict()[FC1], merged[FC1])
    assert not list(tmp_path.glob("*.tmp"))


def test_weight_one_reproduces_that_checkpoints_outputs_exactly(pair, tmp_path):
    a, b = pair
    cli_main(["merge", str(a), str(b), "--weights", "0", "1", "--out", str(tmp_path / "m.pt")])
    assert torch.equal(logits(unival.load_checkpoint(tmp_path / "m.pt")), logits(unival.load_checkpoint(b)))
    assert not torch.equal(logits(unival.load_checkpoint(a)), logits(unival.load_checkpoint(b)))


def test_default_is_a_uniform_soup_and_shared_tensors_stay_bit_exact(tmp_path):
    paths = [write_checkpoint(tmp_path / f"{seed}.pt", seed=seed) for seed in (1, 2, 3)]
    shared = read_checkpoint(paths[0])
    # a third of each, summed in float32, is not the value itself for 9 of these 64 values
    shared["model"]["decoder.layer_norm.weight"] = torch.randn(64, generator=torch.Generator().manual_seed(0))
    for path in paths:
        state = read_checkpoint(path)
        state["model"]["decoder.layer_norm.weight"] = shared["model"]["decoder.layer_norm.weight"]
        torch.save(state, path)
    merged, report = merge_checkpoints(paths)
    weights = [read_checkpoint(path)["model"] for path in paths]
    torch.testing.assert_close(merged["model"][FC1], sum(w[FC1] for w in weights) / 3)
    assert torch.equal(merged["model"]["decoder.layer_norm.weight"], shared["model"]["decoder.layer_norm.weight"])
    floating = sum(value.is_floating_point() for value in weights[0].values())
    assert report.identical >= 1 and report.interpolated + report.identical == floating
    assert [entry["weight"] for entry in merged["merged_from"]] == pytest.approx([1 / 3] * 3)


def test_ema_weights_are_merged_on_request_and_run_state_is_left_out(pair):
    merged, _ = merge_checkpoints(pair, [0.5, 0.5], ema=True)
    first, second = (read_checkpoint(path) for path in pair)
    expected = 0.5 * (first["model"][FC1] + 0.5) + 0.5 * (second["model"][FC1] - 0.25)
    torch.testing.assert_close(merged["model"][FC1], expected)
    assert "last_optimizer_state" not in merged
    assert merged["extra_state"] == {"train_iterator": first["extra_state"]["train_iterator"]}
    assert merged["cfg"] == first["cfg"] and merged["optimizer_history"] == first["optimizer_history"]
    assert all(entry["ema"] for entry in merged["merged_from"])


def test_half_precision_weights_are_summed_in_float32_and_stay_half(tmp_path):
    a = write_checkpoint(tmp_path / "a.pt", seed=1, dtype=torch.float16)
    b = write_checkpoint(tmp_path / "b.pt", seed=2, dtype=torch.float16)
    merged, _ = merge_checkpoints([a, b], [0.3, 0.7])
    first, second = read_checkpoint(a)["model"][FC1], read_checkpoint(b)["model"][FC1]
    assert merged["model"][FC1].dtype == torch.float16
    torch.testing.assert_close(merged["model"][FC1], (0.3 * first.float() + 0.7 * second.float()).half())
    assert not torch.equal(merged["model"][FC1], (0.3 * first + 0.7 * second))  # float16 sums round worse


def test_checkpoints_of_different_networks_are_refused_naming_both(tmp_path):
    a = write_checkpoint(tmp_path / "a.pt", seed=1)
    vocabulary = write_checkpoint(tmp_path / "vocabulary.pt", seed=2, vocabulary=70)
    with pytest.raises(CheckpointError, match=r"(?s)a.pt and .*vocabulary.pt do not hold the same network.*shapes "
                                              r"differ \(\d+\): .*encoder.embed_tokens.weight: \(60, 64\) vs \(70, 64\)"):
        merge_checkpoints([a, vocabulary])
    video = write_checkpoint(tmp_path / "video.pt", seed=2, video_encoder="r3d_18")
    with pytest.raises(CheckpointError, match="different model options \\(video_encoder: None vs 'r3d_18'\\)"):
        merge_checkpoints([a, video])
    heads = write_checkpoint(tmp_path / "heads.pt", seed=2, encoder_attention_heads=2)
    with pytest.raises(CheckpointError, match="different model options \\(encoder_attention_heads: 4 vs 2\\)"):
        merge_checkpoints([a, heads])
    other_dropout = write_checkpoint(tmp_path / "dropout.pt", seed=2, dropout=0.3)
    merge_checkpoints([a, other_dropout])  # training-only options may differ


@pytest.mark.parametrize("weights, message", [
    ([0.5, 0.6], "sum to 1.1"), ([1.0, 0.0, 0.0], "3 weights for 2 checkpoints"), ([float("nan"), 1.0], "finite"),
])
def test_bad_weights_are_refused(pair, weights, message):
    with pytest.raises(ValueError, match=message):
        merge_checkpoints(pair, weights)


def test_interpolation_weights():
    assert interpolation_weights(None, 4) == [0.25] * 4
    assert interpolation_weights([0.2], 2) == pytest.approx([0.2, 0.8])
    assert interpolation_weights([1.2, -0.2], 2) == [1.2, -0.2]  # extrapolation is allowed
    with pytest.raises(ValueError, match="at least two"):
        interpolation_weights(None, 1)


def test_command_line_errors_write_nothing(pair, tmp_path):
    a, b = pair
    out = tmp_path / "m.pt"
    with pytest.raises(SystemExit, match="holds no EMA weights"):
        cli_main(["merge", str(a), str(write_checkpoint(tmp_path / "c.pt", seed=3)), "--ema", "--out", str(out)])
    with pytest.raises(SystemExit, match="is one of the checkpoints being merged"):
        cli_main(["merge", str(a), str(b), "--out", str(a)])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        cli_main(["merge", str(a), str(tmp_path / "missing.pt"), "--out", str(out)])
    assert not out.exists()


def test_original_checkpoints_merge_in_their_own_format(fixtures_dir, tmp_path):
    original = fixtures_dir / "unival_reference" / "checkpoint.pt"
    state = read_checkpoint(original)
    shifted = copy.copy(state)
    shifted["model"] = {key: value + 0.01 if value.is_floating_point() and "rp_bucket" not in key else value
                        for key, value in state["model"].items()}
    torch.save(shifted, tmp_path / "shifted.pt")
    cli_main(["merge", str(original), str(tmp_path / "shifted.pt"), "--weights", "0.75", "--out", str(tmp_path / "m.pt")])
    merged = read_checkpoint(tmp_path / "m.pt")
    assert type(merged["cfg"]["model"]) is type(state["cfg"]["model"])  # the original's argument namespace
    torch.testing.assert_close(merged["model"][FC1], state["model"][FC1] + 0.0025)
    reference = unival.load_checkpoint(original).state_dict()
    loaded = unival.load_checkpoint(tmp_path / "m.pt").state_dict()
    torch.testing.assert_close(loaded[FC1], reference[FC1] + 0.0025)


def test_tied_tensors_stay_one_tensor(pair, tmp_path):
    """BART's token embeddings and output projection are one table: the merged checkpoint stores it once (three
    copies made a merged unival_base file 360 MB larger), and a model loading it keeps them tied."""
    out = tmp_path / "merged.pt"
    cli_main(["merge", str(pair[0]), str(pair[1]), "--weights", "0.8", "--out", str(out)])
    weights = read_checkpoint(out)["model"]
    names = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
    assert len({weights[name].untyped_storage().data_ptr() for name in names}) == 1
    first, second = (read_checkpoint(path)["model"][names[0]] for path in pair)
    assert torch.allclose(weights[names[2]], 0.8 * first + 0.2 * second, atol=1e-6)
    model = unival.load_checkpoint(out)
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight
    # a checkpoint whose tables are separate tensors (equal or not) is merged entry by entry
    untied = read_checkpoint(pair[1])
    untied["model"] = {key: value.clone() for key, value in untied["model"].items()}
    torch.save(untied, tmp_path / "untied.pt")
    merged, _ = merge_checkpoints([pair[0], tmp_path / "untied.pt"])
    assert merged["model"][names[1]].untyped_storage().data_ptr() != \
        merged["model"][names[0]].untyped_storage().data_ptr()
    for name in names:  # each one's own interpolation, from the first checkpoint's shared table
        assert torch.allclose(merged["model"][name], 0.5 * first + 0.5 * untied["model"][name], atol=1e-6)


def test_a_folder_is_named_as_such(pair, tmp_path):
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"exported is a folder \(a model exported by `unival convert`\): give a "
                                         r"checkpoint file \(.pt\)"):
        cli_main(["merge", str(pair[0]), str(tmp_path / "exported"), "--out", str(tmp_path / "m.pt")])
