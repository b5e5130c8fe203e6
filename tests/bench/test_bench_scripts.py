"""Smoke tests of the benchmark scripts in bench/: each main runs at toy sizes and prints the JSON keys the
README's Performance table is built from. Timings are not checked."""
import argparse
import importlib
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Toy shapes: the tiny configuration with a resnet18 on 32 px images, 4 tokens and 40 symbols, one step.
TOY = ["--config", "tiny", "--threads", "1", "--steps", "1", "--warmup", "0", "--batch-size", "2",
       "--image-size", "32", "--tokens", "4", "--vocab-size", "40", "--image-encoder", "resnet18"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return lambda name: importlib.import_module(f"bench.{name}")


def printed_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_matmul_peak(bench, capsys):
    output = bench("matmul_peak").main(["--threads", "1", "--size", "64", "--repeats", "1"])
    assert printed_json(capsys) == output
    assert output["size"] == 64 and output["flops_per_s"] > 0
    from unival.models import cpu_linear
    # both libraries that multiply the model's matrices are measured; the peak is the faster
    assert set(output["flops_per_s_by_library"]) == ({"blas", "onednn"} if cpu_linear.onednn_available() else {"blas"})
    assert output["flops_per_s"] == max(output["flops_per_s_by_library"].values())
    assert output["flops_per_s_by_library"][output["library"]] == output["flops_per_s"]


def test_flop_count_is_the_same_whichever_library_multiplies(bench):
    from unival.models import cpu_linear
    if not cpu_linear.onednn_available():
        pytest.skip("this torch has no oneDNN linear product")
    import torch
    x = torch.randn(3, 5, 16, requires_grad=True)
    weight = torch.randn(24, 16, requires_grad=True)
    saved = dict(cpu_linear._chosen)
    counts = {}
    try:
        for name in ("blas", "onednn"):
            cpu_linear.set_backend(name)
            counts[name] = bench("common").count_flops(lambda: cpu_linear.linear(x, weight).sum().backward())
    finally:
        cpu_linear._chosen.update(saved)
    assert counts == {"blas": 3 * 2 * 15 * 16 * 24, "onednn": 3 * 2 * 15 * 16 * 24}


@pytest.mark.parametrize("optimizer", ["fused", "fairseq"])
def test_train_step(bench, capsys, optimizer):
    output = bench("train_step").main(TOY + ["--peak-size", "64", "--optimizer", optimizer])
    assert printed_json(capsys)["benchmark"] == "train_step"
    assert output["matmul_peak"]["size"] == 64
    result = output["results"]["tiny"]
    assert result["optimizer"] == optimizer
    assert result["config"]["image_encoder"] == "resnet18" and result["config"]["batch_size"] == 2
    assert result["median_s"] > 0 and result["model_flops"] > 0 and result["peak_rss_bytes"] > 0
    assert result["fraction_of_peak"] > 0 and result["fraction_of_peak_best"] >= result["fraction_of_peak"]
    assert output["environment"]["allocator"] in ("glibc", "tcmalloc", "jemalloc")
    capabilities = ("DEFAULT", "NO AVX", "AVX2", "AVX512", "VSX", "Z VECTOR", "SVE256")
    assert output["environment"]["cpu_capability"] in capabilities
    assert output["environment"]["cpu_bfloat16"] in (True, False, None) and output["environment"]["cpu"]
    assert output["environment"]["cpu_linear"] in ("blas", "onednn")
    # overridden shapes are not the issue's: no comparison with the original's figures
    assert "speedup" not in result and "reference_s" not in result


def test_generate_writes_exactly_the_requested_tokens(bench, capsys):
    output = bench("generate").main(TOY + ["--no-peak"])
    printed_json(capsys)
    result = output["results"]["tiny"]
    assert result["new_tokens"] == 4
    for label, beam in (("greedy", 1), ("beam5", 5)):
        assert result[label]["beam"] == beam
        assert result[label]["median_s"] > 0 and result[label]["model_flops"] > 0


def test_generation_times_a_model_whose_batchnorm_statistics_fit_its_inputs(bench):
    """A randomly initialised ResNet-101 with BatchNorm's initial statistics overflows float16 (an H200 run's
    float16 benchmark of unival_base failed on NaNs); the benchmarks' inference model takes them from its batch."""
    import torch
    common = bench("common")
    args = argparse.Namespace(batch_size=2, image_size=128, vocab_size=40, image_encoder="resnet101", tokens=4)
    config = common.bench_config(args, "tiny")
    model, dictionary = common.build_model(config, torch.device("cpu"))
    net_input = common.make_batch(config, dictionary, torch.device("cpu"))["net_input"]
    backbone = model.encoder.embed_images
    momenta = [module.momentum for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        assert backbone.eval()(net_input["patch_images"]).abs().max() > torch.finfo(torch.float16).max
    common.inference_model(model, net_input)
    assert not model.training and not any(parameter.requires_grad for parameter in model.parameters())
    assert [module.momentum for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)] == momenta
    with torch.no_grad():
        assert backbone(net_input["patch_images"]).abs().max() < 100


def test_data_loading(bench, capsys, tmp_path):
    output = bench("data_loading").main([
        "--items", "2", "--repeats", "1", "--workers", "0", "--image-size", "32", "--video-size", "32",
        "--video-frames", "4", "--num-frames", "2", "--frame-size", "32", "--sample-rate", "16000",
        "--clip-seconds", "0.5", "--data-dir", str(tmp_path / "corpus")])
    printed_json(capsys)
    for modality in ("image", "video", "audio"):
        assert output["results"][modality]["files"] == 2
        assert output["results"][modality]["items_per_s"] > 0
    assert output["results"]["video"]["frames_per_s"] == pytest.approx(2 * output["results"]["video"]["items_per_s"])


def test_pretrain_step_times_both_sides_on_the_same_mixed_batch(bench, capsys):
    output = bench("pretrain_step").main(["--streams", "image,audio", "--rows", "1", "--steps", "1", "--warmup", "0",
                                          "--image-size", "32", "--threads", "1"])
    assert printed_json(capsys) == output
    assert output["one_pass_median_s"] > 0 and output["per_stream_median_s"] > 0
    assert output["per_stream_over_one_pass"] == pytest.approx(
        output["per_stream_median_s"] / output["one_pass_median_s"], rel=0.01)
    # one image sample with placeholders for every audio sample and the other way round
    assert output["media_bytes"] < output["media_bytes_with_placeholders"] and output["samples"] >= 2


def test_run_all_table_lists_every_measurement(bench):
    row = {"median_s": 2.0, "min_s": 1.5, "reference_s": 4.0, "speedup": 2.0, "fraction_of_peak": 0.25,
           "fraction_of_peak_best": 0.3}
    results = {
        "train_step": {"base": {**row, "peak_rss_bytes": 2 * 1024 ** 3, "reference_peak_rss_bytes": 4.6e9}},
        "generate": {"base": {"greedy": row, "beam5": row}},
        "data_loading": {"image": {"items_per_s": 100.0}, "video": {"items_per_s": 10.0, "frames_per_s": 80.0},
                         "audio": {"items_per_s": 50.0}},
    }
    table = bench("run_all").render_table(results).splitlines()
    assert len(table) == 2 + 3 + 3
    assert table[2] == "| base | training step | 2.00 | 1.50 | 4.00 | 2.00 | 0.250 (0.300) | 2.00 (original 4.28) |"
    assert "80 frames/s" in table[-2]


def test_run_all_names_the_machine_and_its_peaks(bench, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
                       "model name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert bench("common").cpu_description(str(cpuinfo)) == "AMD EPYC (family 25, model 1)"
    assert bench("common").cpu_description(str(tmp_path / "missing"))  # falls back to the platform's name
    results = {"matmul_peak": {"flops_per_s": 110e9},
               "train_step": {"tiny": {"matmul_peak_flops_per_s": 121e9}, "base": {}},
               "environment": {"cpu": "AMD EPYC (family 25, model 1)", "cpu_capability": "AVX2", "threads": 2,
                               "dtype": "fp32", "allocator": "tcmalloc"}}
    assert bench("run_all").describe_machine(results) == (
        "AMD EPYC (family 25, model 1) AVX2, 2 threads, fp32, allocator tcmalloc: matmul peak 110-121 GFLOP/s")
    results["environment"].update(cpu_capability="AVX512", cpu_linear="onednn")
    assert bench("run_all").describe_machine(results) == (
        "AMD EPYC (family 25, model 1) AVX512, linear layers by oneDNN, 2 threads, fp32, allocator tcmalloc: "
        "matmul peak 110-121 GFLOP/s")


@pytest.mark.parametrize("ablation, measurement", [("few_row_linear", "greedy"), ("late_gradient", "train"),
                                                   ("skip_identity_reorder", "beam5"), ("bf16_autocast", "train"),
                                                   ("onednn_linear", "train")])
def test_ablation_alternates_both_sides_in_one_process(bench, capsys, ablation, measurement):
    # bfloat16 at these toy sizes is fast enough even where the CPU emulates it
    extra = ["--allow-emulated-bf16"] if ablation == "bf16_autocast" else []
    output = bench("ablation").main(TOY + ["--ablation", ablation, "--measurement", measurement, "--rounds", "2"]
                                    + extra)
    assert printed_json(capsys)["ablation"] == ablation
    assert output["measurement"] == measurement and output["config"]["batch_size"] == 2
    for side in ("on", "off"):
        assert len(output[side]["seconds"]) == 2 and output[side]["median_s"] > 0
    assert output["off_over_on"] == pytest.approx(output["off"]["median_s"] / output["on"]["median_s"])


def test_ablation_switches_restore_the_change(bench):
    from unival.models import layers
    from unival.models import unival as unival_model
    ablation = bench("ablation")
    few_rows, late = layers.FEW_ROWS, unival_model.late_gradient
    with ablation.few_row_linear(False), ablation.late_gradient(False):
        assert layers.FEW_ROWS == 0
        weight = object()
        assert unival_model.late_gradient(weight) is weight
    assert layers.FEW_ROWS == few_rows and unival_model.late_gradient is late
    args = argparse.Namespace(dtype="fp32")
    with ablation.bf16_autocast(True):
        assert ablation.precision(args) == "bf16"
    with ablation.bf16_autocast(False):
        assert ablation.precision(args) == "fp32"
    assert ablation.precision(args) == "fp32" and ablation.precision(argparse.Namespace(dtype="bf16")) == "bf16"
    from unival.models import cpu_linear
    chosen = cpu_linear.backend()
    with ablation.onednn_linear(False):
        assert cpu_linear.backend() == "blas"
    assert cpu_linear.backend() == chosen


@pytest.fixture
def cpu_without_bfloat16(monkeypatch):
    from unival.tasks import base
    monkeypatch.setattr(base, "native_bfloat16_cpu", lambda: False)


@pytest.mark.parametrize("script, arguments", [("train_step", ["--dtype", "bf16"]), ("generate", ["--dtype", "bf16"]),
                                               ("ablation", ["--ablation", "bf16_autocast"])])
def test_bfloat16_on_a_cpu_without_its_instructions_is_refused(bench, cpu_without_bfloat16, script, arguments):
    what = " ".join(arguments)
    with pytest.raises(ValueError, match=f"{what}: this CPU has no bfloat16 instructions .* --allow-emulated-bf16"):
        bench(script).main(TOY + arguments + ([] if script == "ablation" else ["--no-peak"]))


def test_run_all_refuses_emulated_bfloat16_before_measuring_anything(bench, cpu_without_bfloat16, monkeypatch,
                                                                      capsys):
    run_all = bench("run_all")
    started = []
    monkeypatch.setattr(run_all, "run_script", lambda module, arguments, env=None: started.append(module))
    with pytest.raises(SystemExit):
        run_all.main(["--dtype", "bf16", "--skip-data"])
    assert started == [] and "--dtype bf16: this CPU has no bfloat16 instructions" in capsys.readouterr().err
    with pytest.raises(TypeError):  # allowed: it goes on to the benchmarks (this stub returns no JSON)
        run_all.main(["--dtype", "bf16", "--skip-data", "--allow-emulated-bf16", "--malloc", "glibc"])
    assert started[0] == "bench.matmul_peak"
    assert "--allow-emulated-bf16" in run_all.model_arguments(argparse.Namespace(
        threads=1, device="cpu", dtype="bf16", steps=1, warmup=0, no_channels_last=False, compile=False,
        release_freed_memory=False, allow_emulated_bf16=True))


def test_freed_memory_ablation_needs_the_training_step(bench):
    with pytest.raises(SystemExit):
        bench("ablation").main(TOY + ["--ablation", "freed_memory", "--measurement", "greedy"])


def test_allocator_ablation_needs_another_allocator(bench, monkeypatch, capsys):
    from unival import allocator
    monkeypatch.setattr(allocator, "find_library", lambda name: None)
    with pytest.raises(SystemExit):
        bench("ablation").main(TOY + ["--ablation", "allocator"])
    assert "gives glibc's malloc, the side it is compared with" in capsys.readouterr().err


def test_allocator_ablation_runs_each_side_with_its_allocator(bench, monkeypatch, capsys):
    from unival import allocator
    chosen, _ = allocator.resolve("auto")
    if chosen == "glibc":
        pytest.skip("the system has neither tcmalloc nor jemalloc (apt install libtcmalloc-minimal4)")
    monkeypatch.chdir(REPO_ROOT)  # the sides run `python -m bench.train_step`
    output = bench("ablation").main(TOY + ["--ablation", "allocator", "--rounds", "1"])
    printed_json(capsys)
    assert output["on"]["allocator"] == chosen and output["off"]["allocator"] == "glibc"
    for side in ("on", "off"):
        assert output[side]["median_s"] > 0 and output[side]["peak_rss_bytes"][0] > 0


def test_run_all_refuses_an_unknown_allocator(bench, capsys):
    with pytest.raises(SystemExit):
        bench("run_all").main(["--malloc", "mimalloc", "--skip-data"])
    assert "--malloc mimalloc: expected one of auto, tcmalloc, jemalloc, glibc" in capsys.readouterr().err


def test_flop_count_includes_the_cpus_fused_attention(bench):
    """Without gradients, scaled_dot_product_attention runs a fused CPU kernel that torch's counter does not know:
    the attention of every generation step went uncounted."""
    import torch
    import torch.nn.functional as F
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    with torch.no_grad():
        flops = bench("common").count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * (2 * 2 * 4 * 5 * 7 * 8)  # q k^T and its product with v


def test_reference_figures_apply_only_with_their_thread_count(bench):
    module = bench("train_step")
    assert module.is_reference_shape(module.parse_args([]))
    assert not module.is_reference_shape(module.parse_args(["--threads", "1"]))


def test_ablation_options_that_would_be_ignored_are_refused_or_passed_on(bench, monkeypatch, capsys):
    ablation = bench("ablation")
    for extra in (["--no-peak"], ["--peak-size", "64"]):
        with pytest.raises(SystemExit):
            ablation.main(TOY + ["--ablation", "late_gradient"] + extra)
        assert "an ablation measures no matmul peak" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(ablation, "run_script", lambda module, arguments, env: seen.append(arguments) or {
        "results": {"tiny": {"median_s": 1.0}}, "environment": {}})
    ablation.main(TOY + ["--ablation", "freed_memory", "--rounds", "1", "--no-channels-last", "--compile"])
    capsys.readouterr()
    assert all("--no-channels-last" in arguments and "--compile" in arguments for arguments in seen) and len(seen) == 2
    assert seen[0][seen[0].index("--steps") + 1] == "1"  # TOY's --steps, passed on
