"""Checkpoint loading: option mapping, EMA and fp16 weights, safe unpickling, strict errors, convert."""
import argparse
import copy
import os

import pytest
import torch

import unival
from unival.checkpoint import (CheckpointError, build_from_checkpoint, config_from_original, placeholder_dictionary,
                               read_checkpoint)
from unival.cli import main as cli_main
from unival.convert import load_safetensors

from test_merge import write_checkpoint


@pytest.fixture(scope="module")
def original(fixtures_dir):
    folder = fixtures_dir / "unival_reference"
    state = read_checkpoint(folder / "checkpoint.pt")
    batch = torch.load(folder / "batch.pt", weights_only=True)["image"]
    return folder / "checkpoint.pt", state, batch


def logits_of(model, batch):
    with torch.no_grad():
        return model(**batch)[0]


def test_original_options_are_mapped(original):
    _, state, _ = original
    cfg = config_from_original(state["cfg"]["model"])
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_embed_dim, cfg.encoder_attention_heads) == (2, 2, 256, 4)
    assert (cfg.encoder_ffn_embed_dim, cfg.image_bucket_size, cfg.token_bucket_size) == (1024, 16, 256)
    assert (cfg.image_encoder, cfg.image_encoder_stages) == ("resnet50", 3)
    assert not (cfg.no_attn_ln or cfg.no_ffn_ln or cfg.no_head_scale or cfg.no_type_embedding)
    assert cfg.code_layernorm_embedding


def test_unsupported_original_options_are_refused(original):
    _, state, _ = original
    args = copy.copy(state["cfg"]["model"])
    args.scale_resids = True
    with pytest.raises(CheckpointError, match="scale-resids"):
        config_from_original(args)
    args = copy.copy(state["cfg"]["model"])
    args.disable_entangle, args.entangle_position_embedding = False, True
    with pytest.raises(CheckpointError, match="entangled"):
        config_from_original(args)


def test_ema_weights_are_picked_on_request(original):
    path, state, batch = original
    state = copy.copy(state)
    ema = {key: (value + 0.01 if value.is_floating_point() else value) for key, value in state["model"].items()}
    state["extra_state"] = {"ema": ema}
    plain, _ = build_from_checkpoint(state, ema=False)
    averaged, _ = build_from_checkpoint(state, ema=True)
    key = "encoder.layers.0.fc1.weight"
    assert torch.equal(plain.state_dict()[key], state["model"][key])
    assert torch.equal(averaged.state_dict()[key], ema[key])
    with pytest.raises(CheckpointError, match="no EMA weights"):
        unival.load_checkpoint(path, ema=True)


def test_fp16_weights_are_upcast(original):
    _, state, batch = original
    half = dict(state, model={k: (v.half() if v.is_floating_point() else v) for k, v in state["model"].items()})
    model, _ = build_from_checkpoint(half)
    full, _ = build_from_checkpoint(state)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    difference = (logits_of(model.eval(), batch) - logits_of(full.eval(), batch)).abs().max()
    assert 0 < difference < 0.1


def test_mismatched_weights_list_every_difference(original):
    _, state, _ = original
    weights = dict(state["model"])
    del weights["encoder.pos_ln.weight"]
    weights["encoder.bogus.weight"] = torch.zeros(1)
    weights["decoder.layer_norm.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as error:
        build_from_checkpoint(dict(state, model=weights), source="broken.pt")
    message = str(error.value)
    assert "broken.pt" in message and "missing (1): encoder.pos_ln.weight" in message
    assert "unexpected (1): encoder.bogus.weight" in message
    assert "decoder.layer_norm.bias: checkpoint (3,) vs model (256,)" in message


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_untrusted_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="allow_unsafe"):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="full unpickling"):
        read_checkpoint(path, allow_unsafe=True)
    assert marker.exists()


def test_namespace_is_the_only_extra_type_original_checkpoints_need(original):
    _, state, _ = original
    assert isinstance(state["cfg"]["model"], argparse.Namespace)


def test_convert_round_trip_gives_identical_outputs(original, tmp_path):
    path, _, batch = original
    assert cli_main(["convert", str(path), "--out", str(tmp_path / "converted")]) == 0
    assert (tmp_path / "converted" / "model.safetensors").is_file()
    reference = logits_of(unival.load_checkpoint(path), batch)
    assert torch.equal(logits_of(load_safetensors(tmp_path / "converted"), batch), reference)
    assert torch.equal(logits_of(unival.load_checkpoint(tmp_path / "converted"), batch), reference)
    # the training run's task options travel along (unival evaluate adopts its image size from them)
    from unival.checkpoint import load_checkpoint_and_task_options, read_checkpoint, stored_task_options
    trained = stored_task_options(read_checkpoint(path))
    _, stored = load_checkpoint_and_task_options(tmp_path / "converted")
    assert stored["patch_image_size"] == trained["patch_image_size"] and len(stored) > 10
    assert all(stored[key] == value for key, value in trained.items() if isinstance(value, (int, float, str)))


def test_convert_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["convert", str(tmp_path / "none.pt"), "--out", str(tmp_path / "converted")]) == 2
    assert capsys.readouterr().err == f"unival convert: error: checkpoint not found: {tmp_path / 'none.pt'}\n"
    (tmp_path / "args.json").write_text("{}")
    assert cli_main(["convert", str(tmp_path / "args.json"), "--out", str(tmp_path / "converted")]) == 2
    assert "args.json is not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "converted").exists()


def test_convert_to_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    assert cli_main(["convert", str(tmp_path / "none.pt"), "--out", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err == (f"unival convert: error: --out {tmp_path / 'afile'} is a file: give a folder "
                                       f"to write model.safetensors, config.json and dict.txt into\n")
    assert (tmp_path / "afile").read_text() == "mine"


def test_converted_files_get_the_umasks_permissions(tmp_path):
    path = write_checkpoint(tmp_path / "a.pt", seed=1)
    state = torch.load(path, weights_only=False)
    state["task_state"] = {"vocabulary": placeholder_dictionary(60).symbols}
    torch.save(state, path)
    umask = os.umask(0o022)
    try:
        assert cli_main(["convert", str(path), "--out", str(tmp_path / "converted")]) == 0
    finally:
        os.umask(umask)
    modes = {file.name: file.stat().st_mode & 0o777 for file in (tmp_path / "converted").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644, "dict.txt": 0o644}


def multimodal_checkpoint(folder):
    """A state dict with the names, shapes and dtypes of the original's image+video+audio model (random
    values; the derived position buckets computed as the original does), with its arguments."""
    import json

    from unival.models.position import image_relative_buckets, token_relative_buckets

    args = argparse.Namespace(**json.loads((folder / "multimodal_args.json").read_text())["model_args"])
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for line in (folder / "multimodal_state_dict_keys.txt").read_text().splitlines():
        key, shape, dtype, _ = line.split("\t")
        shape = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
        if key.endswith("token_rp_bucket"):
            weights[key] = token_relative_buckets(args.token_bucket_size, shape[0])
        elif key.endswith("image_rp_bucket"):
            weights[key] = image_relative_buckets(args.image_bucket_size)
        elif dtype == "torch.int64":
            weights[key] = torch.zeros(shape, dtype=torch.long)
        else:
            weights[key] = torch.randn(shape, generator=generator)
    return {"model": weights, "cfg": {"model": args}}


def test_video_and_audio_encoders_of_the_original_map_strictly(fixtures_dir):
    state = multimodal_checkpoint(fixtures_dir / "unival_reference")
    model, cfg = build_from_checkpoint(state, source="multimodal")
    assert (cfg.video_encoder, cfg.audio_encoder, cfg.image_encoder_stages) == ("resnext50", "cnn6", 4)
    assert (cfg.audio_sample_rate, cfg.audio_hop_size, cfg.audio_mel_bins) == (48000, 480, 64)
    loaded = model.state_dict()
    for key in ("encoder.embed_videos.layer4.2.conv3.weight", "encoder.embed_audios.logmel_extractor.melW",
                "encoder.embed_audios.conv_block4.conv1.weight", "encoder.video_proj.weight",
                "encoder.embed_audio_positions.weight"):
        assert torch.equal(loaded[key], state["model"][key]), key


def test_unsupported_original_encoders_are_named(fixtures_dir):
    state = multimodal_checkpoint(fixtures_dir / "unival_reference")
    state["cfg"]["model"].audio_encoder_name = "pann_cnn10"
    with pytest.raises(CheckpointError, match="audio-encoder-name pann_cnn10"):
        build_from_checkpoint(state)


def test_files_that_are_not_checkpoints_are_named_as_such(tmp_path):
    """A JSON file, or a checkpoint cut short, is no reason to suggest unsafe loading."""
    text = tmp_path / "args.json"
    text.write_text('{"lr": 0.1}')
    with pytest.raises(CheckpointError, match=r"args.json is not a PyTorch checkpoint \(neither the zip archive of "
                                              r"torch.save nor a pickle; it starts with b'\{\"lr'\)"):
        read_checkpoint(text)
    whole = tmp_path / "whole.pt"
    torch.save({"model": {"weight": torch.ones(1000)}}, whole)
    for name, data in (("cut.pt", whole.read_bytes()[:2000]), ("legacy.pt", b"\x80\x02\x8a")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name} is damaged or not a checkpoint") as raised:
            read_checkpoint(tmp_path / name)
        assert "allow_unsafe" not in str(raised.value)
    assert torch.equal(read_checkpoint(whole)["model"]["weight"], torch.ones(1000))
