"""Tests of the video backbones: output grids, gradients, the original's parameter names, weight loading,
and the tokens and position ids of video features."""
import ast

import pytest
import torch
from torchvision.models import video as tv_video

from unival.models.video_encoders import ResNeXt3D, VideoBackbone, video_position_ids, video_tokens

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
    with pytest.raises(ValueError, match="17x16 patch grid does not fit"):
        video_position_ids(1, 17, 16, bucket_size=16)
