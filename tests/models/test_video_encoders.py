"""Tests of the video backbones: output grids, gradients, the original's parameter names, weight loading,
the frame-wise ResNets, and the tokens and position ids of video features."""
import ast

import pytest
import torch
from torchvision.models import video as tv_video

from unival.models.image_encoders import ResNetBackbone
from unival.models.video_encoders import (MAX_FRAMES, ResNeXt3D, VideoBackbone, video_position_ids,
                                          video_tokens)

CHANNELS = {"resnext50": 2048, "resnext101": 2048, "r3d_18": 512, "r2plus1d_18": 512}


def clip(batch=2, frames=4, size=48, seed=0):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def backbone(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return VideoBackbone(name, **kwargs)


@pytest.fixture(scope="module")
def eval_backbones():
    """One randomly initialised backbone of each name in eval mode, built once; tests must not change them."""
    return {name: backbone(name).eval() for name in CHANNELS}


@pytest.mark.parametrize("name, frames, size, grid", [
    ("resnext50", 4, 48, (1, 2, 2)),
    ("resnext50", 16, 32, (1, 1, 1)),  # time / 16, space / 32
    ("resnext50", 17, 33, (2, 2, 2)),
    ("resnext101", 4, 48, (1, 2, 2)),
    ("r3d_18", 4, 48, (1, 3, 3)),  # time / 8, space / 16
    ("r3d_18", 9, 16, (2, 1, 1)),
    ("r2plus1d_18", 4, 48, (1, 3, 3)),
])
def test_output_grid_and_channels(eval_backbones, name, frames, size, grid):
    model = eval_backbones[name]
    with torch.no_grad():
        features = model(clip(batch=1, frames=frames, size=size))
    assert model.num_channels == CHANNELS[name]
    assert features.shape == (1, CHANNELS[name], *grid)
    assert torch.isfinite(features).all()


def test_without_keep_time_time_is_averaged_to_one_step(eval_backbones):
    kept = eval_backbones["r3d_18"]
    pooled = VideoBackbone("r3d_18", keep_time=False).eval()
    pooled.load_state_dict(kept.state_dict())
    video = clip(batch=1, frames=16, size=16)
    with torch.no_grad():
        steps, single = kept(video), pooled(video)
    assert steps.shape == (1, 512, 2, 1, 1) and single.shape == (1, 512, 1, 1, 1)
    torch.testing.assert_close(single, steps.mean(dim=2, keepdim=True))


def test_backbone_runs_the_networks_own_layers_in_order(eval_backbones):
    resnext = ResNeXt3D(depth=50).eval()
    resnext.load_state_dict(eval_backbones["resnext50"].state_dict())
    torchvision_net = tv_video.r3d_18(weights=None).eval()
    torchvision_net.fc = torch.nn.Identity()
    torchvision_net.load_state_dict(eval_backbones["r3d_18"].state_dict())
    video = clip(batch=1, size=16)
    with torch.no_grad():
        torch.testing.assert_close(eval_backbones["resnext50"](video), resnext(video))
        # torchvision's classifier input is the average of the backbone's features
        torch.testing.assert_close(eval_backbones["r3d_18"](video).mean(dim=(2, 3, 4)), torchvision_net(video))


@pytest.mark.parametrize("name", ["resnext50", "r3d_18", "r2plus1d_18"])
def test_gradient_reaches_every_parameter(name):
    model = backbone(name).train()
    model(clip(frames=2, size=16)).square().mean().backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []



@pytest.mark.parametrize("name, frames", [("r3d_18", 4), ("r2plus1d_18", 4), ("resnext50", 16)])
def test_cpu_bfloat16_autocast_gives_the_float32_gradients_of_short_clips(name, frames):
    """oneDNN's bfloat16 weight gradients of 3-D convolutions over 2 time steps (r3d_18 and r2plus1d_18's layer2 on
    4 frames, the ResNeXt's layer3 on 16) are wrong on the CPU; training under autocast must not get them."""
    model = backbone(name).train()
    video = clip(batch=2, frames=frames, size=32)
    model(video).square().mean().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model(video)
    features.float().square().mean().backward()
    for n, p in model.named_parameters():
        error = (p.grad - reference[n]).abs().max() / reference[n].abs().max()
        assert error < 0.05, f"{n}: relative error {error}"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.eval()(video).dtype == torch.bfloat16  # inference keeps bfloat16

def test_resnext_parameter_names_and_shapes_match_the_original(fixtures_dir):
    keys_file = fixtures_dir / "unival_reference" / "multimodal_state_dict_keys.txt"
    if not keys_file.is_file():
        pytest.skip(f"{keys_file} not found")
    prefix = "encoder.embed_videos."
    expected = {}
    for line in keys_file.read_text().splitlines():
        name, shape = line.split("\t")[:2]
        if name.startswith(prefix):
            expected[name[len(prefix):]] = tuple(ast.literal_eval(shape))
    assert len(expected) == 318
    for model in (ResNeXt3D(depth=50), VideoBackbone("resnext50")):
        assert {name: tuple(value.shape) for name, value in model.state_dict().items()} == expected


def test_loads_a_kinetics_checkpoint_with_module_prefix_and_classifier(tmp_path, eval_backbones):
    source = eval_backbones["resnext50"]
    # As Hara et al.'s files: DataParallel names, a 400-class classifier, no BatchNorm step counters.
    state = {f"module.{name}": value for name, value in source.state_dict().items()
             if not name.endswith("num_batches_tracked")}
    state["module.fc.weight"], state["module.fc.bias"] = torch.randn(400, 2048), torch.zeros(400)
    file = tmp_path / "resnext-50-kinetics.pth"
    torch.save({"epoch": 200, "arch": "resnext-50", "state_dict": state}, file)
    loaded = VideoBackbone("resnext50", weights_path=str(file))
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_loads_a_torchvision_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(2)
    state = tv_video.r3d_18(weights=None).state_dict()  # includes fc.weight / fc.bias
    file = tmp_path / "r3d_18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    loaded = VideoBackbone("r3d_18", weights_path=str(file))
    assert torch.equal(loaded.state_dict()["stem.0.weight"], state["stem.0.weight"])
    assert torch.equal(loaded.state_dict()["layer4.1.conv2.1.running_var"], state["layer4.1.conv2.1.running_var"])


def test_weights_that_do_not_fit_raise_listing_the_keys(tmp_path):
    file = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7, 7), "head.weight": torch.zeros(3)}, file)
    # 318 tensors less conv1 and the 53 BatchNorm step counters, which old checkpoints lack and torch allows
    with pytest.raises(ValueError, match=r"partial.pth does not fit video encoder resnext50: 264 missing keys "
                                         r"\['bn1.weight', .*\] and 254 more, 1 unexpected keys \['head.weight'\]"):
        VideoBackbone("resnext50", weights_path=str(file))


def test_weights_of_the_wrong_shape_raise_naming_the_file(tmp_path):
    file = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 7, 7)}, file)
    with pytest.raises(ValueError, match="(?s)wrong.pth does not fit video encoder resnext50.*conv1.weight"):
        VideoBackbone("resnext50").load_weights(str(file))


def test_missing_weights_file_and_unknown_name():
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        VideoBackbone("r3d_18", weights_path="nowhere.pth")
    with pytest.raises(ValueError, match="unknown video encoder 'resnext18'.*resnext50, resnext101, r3d_18"):
        VideoBackbone("resnext18")


@pytest.mark.parametrize("name, frames, size, grid, channels", [
    ("frames_resnet18", 3, 64, (3, 2, 2), 512),  # every frame kept, space / 32
    ("frames_resnet18_s3", 4, 64, (4, 4, 4), 256),  # space / 16
    ("frames_resnet18_s2", 2, 32, (2, 4, 4), 128),  # space / 8
    ("frames_resnet18_s1", 1, 16, (1, 4, 4), 64),  # space / 4
])
def test_frame_wise_output_grid_and_channels(name, frames, size, grid, channels):
    model = backbone(name).eval()
    with torch.no_grad():
        features = model(clip(batch=2, frames=frames, size=size))
    assert model.num_channels == channels
    assert features.shape == (2, channels, *grid)


def test_frame_wise_runs_the_resnet_on_each_frame_then_adds_each_steps_time_embedding():
    model = backbone("frames_resnet18_s2").eval()
    resnet = ResNetBackbone("resnet18", num_stages=2).eval()
    resnet.load_state_dict({key[len("frames."):]: value for key, value in model.state_dict().items()
                            if key.startswith("frames.")})
    video = clip(batch=2, frames=3, size=16)
    time_table = model.state_dict()["time_embedding.weight"]
    assert time_table.shape == (MAX_FRAMES, 128)
    with torch.no_grad():
        features = model(video)
        for step in range(3):
            expected = resnet(video[:, :, step]) + time_table[step][None, :, None, None]
            torch.testing.assert_close(features[:, :, step], expected)


def test_frame_wise_tells_a_clip_from_the_same_clip_reversed():
    # the reason for the time embedding: video position ids repeat at every step, so only it orders frames
    model = backbone("frames_resnet18_s2").eval()
    video = clip(batch=1, frames=2, size=16)
    with torch.no_grad():
        forward, backward = model(video), model(video.flip(2))
    assert not torch.allclose(forward.flip(2), backward)
    torch.testing.assert_close(forward.flip(2) - backward,
                               (model.time_embedding.weight[[1, 0]] - model.time_embedding.weight[:2]).t()
                               [None, :, :, None, None].expand_as(forward))


def test_frame_wise_gradient_reaches_every_parameter():
    model = backbone("frames_resnet18_s2").train()
    model(clip(frames=2, size=16)).square().mean().backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []
    # steps the clip does not reach get no gradient and are left alone by the optimiser
    assert model.time_embedding.weight.grad[2:].abs().sum() == 0


def test_frame_wise_loads_a_2d_resnets_weights_keeping_its_time_embedding(tmp_path):
    torch.manual_seed(3)
    resnet = ResNetBackbone("resnet18", num_stages=4)
    state = dict(resnet.state_dict(), **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    file = tmp_path / "resnet18.pth"
    torch.save(state, file)
    model = backbone("frames_resnet18_s2")
    time_table = model.time_embedding.weight.detach().clone()
    model.load_weights(str(file))  # stages 3 and 4 and the classifier are dropped
    assert torch.equal(model.state_dict()["frames.layer2.1.conv2.weight"], state["layer2.1.conv2.weight"])
    assert torch.equal(model.time_embedding.weight, time_table)
    saved = tmp_path / "frames.pth"
    torch.save(model.state_dict(), saved)  # its own state dict, time embedding included
    reloaded = backbone("frames_resnet18_s2", seed=4, weights_path=str(saved))
    assert torch.equal(reloaded.time_embedding.weight, time_table)


def test_frame_wise_names_that_do_not_fit_raise():
    with pytest.raises(ValueError, match="video encoder 'frames_resnet18_s5': a ResNet has stages 1 to 4, not 5"):
        VideoBackbone("frames_resnet18_s5")
    with pytest.raises(ValueError, match="unknown video encoder 'frames_resnet7': unknown image encoder 'resnet7'"):
        VideoBackbone("frames_resnet7")
    with pytest.raises(ValueError, match="unknown video encoder 'resnet18'.* or frames_<timm resnet>"):
        VideoBackbone("resnet18")
    too_long = clip(batch=1, frames=MAX_FRAMES + 1, size=8)
    with pytest.raises(ValueError, match=f"{MAX_FRAMES + 1} frames: .* has {MAX_FRAMES} steps"):
        backbone("frames_resnet18_s1")(too_long)


def test_video_tokens_are_time_major_then_row_major():
    features = torch.arange(2 * 3 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 3, 4)
    tokens = video_tokens(features)
    assert tokens.shape == (2, 24, 3)
    t, h, w = 1, 2, 3
    assert torch.equal(tokens[1, t * 12 + h * 4 + w], features[1, :, t, h, w])


def test_video_position_ids_repeat_the_image_grid_each_time_step():
    ids = video_position_ids(2, 3, 4, bucket_size=16)
    first_step = [1, 2, 3, 4, 17, 18, 19, 20, 33, 34, 35, 36]
    assert ids.tolist() == first_step + first_step
    full = video_position_ids(1, 16, 16, bucket_size=16)
    assert full.shape == (256,) and full.min() == 1 and full.max() == 256  # the original's 257-row table
    with pytest.raises(ValueError, match=r"17x16 patch grid \(the input resolution over the encoder.s stride\) does "
                                         r"not fit the model.s 16x16 position grid \(--image-bucket-size 16, fixed "
                                         r"once a model is trained\): lower the input resolution"):
        video_position_ids(1, 17, 16, bucket_size=16)
