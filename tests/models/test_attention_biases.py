"""The attention biases are built once per forward and shared by the layers; beam search's reorderings within a
sample copy no encoder state; the speed options (channels-last, compiled layers, half precision) keep outputs."""
import pytest
import torch
import torch.nn as nn
from fairseq.data import Dictionary
from fairseq.sequence_generator import SequenceGenerator

import unival.models.layers as layers
import unival.models.unival as unival_module
from unival.models.layers import FEW_ROWS, Linear, TokenEmbedding
from unival.models.position import layered_relative_bias
from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults

VOCAB = 40


def tiny_model(**overrides) -> UnivalModel:
    dictionary = Dictionary()
    for index in range(VOCAB - len(dictionary)):
        dictionary.add_symbol(f"w{index}")
    values = architecture_defaults("unival_tiny")
    values.update(encoder_embed_dim=32, decoder_embed_dim=32, encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64,
                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_layers=3, decoder_layers=3,
                  dropout=0.0, encoder_drop_path_rate=0.0, decoder_drop_path_rate=0.0, image_bucket_size=8)
    values.update(overrides)
    torch.manual_seed(0)
    return UnivalModel.from_config(UnivalConfig(**values), dictionary).eval()


def encoder_input(batch=2, text=3):
    torch.manual_seed(1)
    return {"src_tokens": torch.randint(4, VOCAB, (batch, text)), "src_lengths": torch.full((batch,), text),
            "patch_images": torch.randn(batch, 3, 32, 32), "patch_masks": torch.ones(batch, dtype=torch.bool)}


def test_layered_relative_bias_equals_each_layers_lookup():
    tables = [nn.Embedding(7, 2) for _ in range(3)]
    buckets = torch.tensor([[0, 3, 6], [1, 1, 5]])
    bias = layered_relative_bias(tables, buckets)
    assert bias.shape == (3, 2, 2, 3)  # (layers, heads, T, S)
    for layer, table in enumerate(tables):
        assert torch.equal(bias[layer], table(buckets).permute(2, 0, 1))


def test_encoder_layers_get_their_relative_biases_and_padding(monkeypatch):
    """Hand-made tables: token table of layer l holds 100 l + bucket + 0.5 head, image table -(100 l + bucket);
    the absolute part is zeroed. A 32 px image gives a 2x2 patch grid (ids 1, 2, 9, 10 on the 8x8 grid)
    before the 3 text tokens, the last of them padding."""
    model = tiny_model()
    encoder = model.encoder
    for linear in (encoder.pos_q_linear, encoder.pos_k_linear):
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
    with torch.no_grad():
        for layer, (token, image) in enumerate(zip(encoder.token_rel_pos_table_list, encoder.image_rel_pos_table_list)):
            buckets = torch.arange(token.weight.size(0), dtype=torch.float)[:, None]
            token.weight.copy_(100 * layer + buckets + 0.5 * torch.arange(2.0))
            image.weight.copy_(-(100 * layer + torch.arange(image.weight.size(0), dtype=torch.float)[:, None]))
    seen = []
    for layer in encoder.layers:
        layer.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    inputs = encoder_input(batch=1)
    inputs["src_tokens"][0, -1] = 1  # padding
    with torch.no_grad():
        encoder(**inputs)
    assert len(seen) == 3
    for layer, bias in enumerate(seen):
        bias = bias[0]  # (H, 7, 7): 4 patches then 3 text tokens
        # text block: 1-D buckets i - j + 255 (token bucket size 256)
        assert bias[1, 4, 5].item() == 100 * layer + (0 - 1 + 255) + 0.5
        assert bias[0, 5, 4].item() == 100 * layer + (1 - 0 + 255)
        # patch block: 2-D buckets (drow + 7) * 15 + (dcol + 7); patch 0 is (0, 0), patch 3 is (1, 1)
        assert bias[0, 0, 3].item() == -(100 * layer + 6 * 15 + 6)
        assert bias[1, 3, 0].item() == -(100 * layer + 8 * 15 + 8)
        # between patches and text only the (zeroed) absolute bias; padded keys are masked for every query
        assert bias[:, :4, 4:6].abs().sum() == 0 and bias[:, 4:6, :4].abs().sum() == 0
        assert torch.isinf(bias[:, :, 6]).all()


def test_relative_buckets_are_looked_up_once_per_forward(monkeypatch):
    calls = []

    def counted(tables, buckets):
        calls.append(len(tables))
        return layered_relative_bias(tables, buckets)

    monkeypatch.setattr(unival_module, "layered_relative_bias", counted)
    model = tiny_model()
    tokens = torch.tensor([[0, 5, 6, 7]] * 2)
    with torch.no_grad():
        encoded = model.encoder(**encoder_input())
        assert calls == [3, 3]  # text and patch tables, each for all 3 layers at once
        model.decoder(tokens, encoded)
        assert calls == [3, 3, 3]
        model.decoder(tokens[:, :1], encoded, incremental_state={})
    assert calls == [3, 3, 3, 3]


def cross_attention_keys(model, state):
    return [layer.encoder_attn.get_incremental_state(state, "attn_state")["key"] for layer in model.decoder.layers]


def test_beam_reordering_within_a_sample_copies_no_encoder_state():
    model = tiny_model()
    tokens = torch.tensor([[0, 5, 6], [0, 7, 8], [0, 9, 10], [0, 11, 12]])
    beam_order = torch.tensor([1, 0, 3, 2])  # hypotheses swap places inside each sample
    with torch.no_grad():
        encoded = model.encoder(**encoder_input())
        expanded = model.encoder.reorder_encoder_out(encoded, torch.tensor([0, 0, 1, 1]))  # beam of 2
        assert expanded["encoder_out"][0].shape[1] == 4
        state = {}
        model.decoder(tokens[:, :1], expanded, incremental_state=state)
        keys = cross_attention_keys(model, state)
        assert model.encoder.reorder_encoder_out(expanded, beam_order) is expanded
        model.decoder.reorder_incremental_state_scripting(state, beam_order)
        assert all(after is before for after, before in zip(cross_attention_keys(model, state), keys))
        step, _ = model.decoder(tokens[beam_order, :2], expanded, incremental_state=state)
        full, _ = model.decoder(tokens[beam_order, :2], expanded)
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-5)


def beam_search(model, monkeypatch, remember: bool):
    """Beam 3 over 3 inputs (end of sentence made likelier, so that inputs finish at different steps) -> the best
    hypotheses, the row counts of the decoder's reorderings and the number of reordering decisions read."""
    dictionary = model.decoder.dictionary
    with torch.no_grad():
        model.decoder.embed_tokens.weight[dictionary.eos()] *= 2
    reads, rows = [], []
    read = layers.read_reorder_effect
    monkeypatch.setattr(layers, "read_reorder_effect", lambda *args: reads.append(1) or read(*args))
    if not remember:
        monkeypatch.setattr(layers, "reorder_effect", layers.read_reorder_effect)
        monkeypatch.setattr(unival_module, "reorder_effect", layers.read_reorder_effect)
    reorder = unival_module.UnivalDecoder.reorder_incremental_state_scripting
    monkeypatch.setattr(unival_module.UnivalDecoder, "reorder_incremental_state_scripting",
                        lambda self, state, order: rows.append(order.numel()) or reorder(self, state, order))
    generator = SequenceGenerator([model], dictionary, beam_size=3, max_len_a=0, max_len_b=8, min_len=1)
    with torch.no_grad():
        hypotheses = generator.forward({"net_input": encoder_input(batch=3)})
    return [best[0]["tokens"].tolist() for best in hypotheses], rows, len(reads)


def test_beam_search_reads_each_reordering_decision_once(monkeypatch):
    """On a GPU each decision read is a synchronisation: one per step, not one per layer, for the decoder's
    position keys and for the encoder, also after finished inputs left the batch (new cache tensors)."""
    tokens, rows, reads = beam_search(tiny_model(), monkeypatch, remember=True)
    assert rows == [9, 9, 9, 3, 3, 3]  # two of the three inputs finish at the fourth step
    assert reads == 6 + 1  # + the encoder's expansion of each input to its beam before the first step
    with monkeypatch.context() as unremembered:
        same_tokens, _, unremembered_reads = beam_search(tiny_model(), unremembered, remember=False)
    assert same_tokens == tokens
    assert unremembered_reads > 4 * 6  # each of the 3 layers, the position keys, the encoder...


def test_reorder_decision_is_remembered_only_for_the_same_unchanged_tensors(monkeypatch):
    reads = []
    read = layers.read_reorder_effect
    monkeypatch.setattr(layers, "read_reorder_effect", lambda *args: reads.append(1) or read(*args))
    rows, order = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 2, 3])
    assert layers.reorder_effect(rows, order) == (False, True)
    assert layers.reorder_effect(rows, order) == (False, True) and len(reads) == 1
    assert layers.reorder_effect(rows, order.clone()) == (False, True) and len(reads) == 2
    order[1:3] = torch.tensor([2, 0])  # rows of the two inputs mixed: changed in place
    assert layers.reorder_effect(rows, order) == (False, False) and len(reads) == 3
    assert layers.reorder_effect(rows, torch.arange(4)) == (True, True)
    assert layers.reorder_effect(rows, torch.arange(3)) == (False, False)
    with torch.inference_mode():  # inference tensors have no version counter: read every time
        rows, order = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 2, 3])
        before = len(reads)
        assert [layers.reorder_effect(rows, order) for _ in range(2)] == [(False, True)] * 2
    assert len(reads) == before + 2


def test_beam_search_under_inference_mode():
    model = tiny_model()
    generator = SequenceGenerator([model], model.decoder.dictionary, beam_size=3, max_len_a=0, max_len_b=5)
    with torch.no_grad():
        expected = [best[0]["tokens"].tolist() for best in generator.forward({"net_input": encoder_input(batch=3)})]
    with torch.inference_mode():
        hypotheses = generator.forward({"net_input": encoder_input(batch=3)})
    assert [best[0]["tokens"].tolist() for best in hypotheses] == expected


def test_channels_last_image_encoder_gives_the_same_output():
    inputs = dict(encoder_input(), prev_output_tokens=torch.tensor([[0, 5, 6]] * 2))
    channels_last, nchw = tiny_model(), tiny_model(no_channels_last=True)
    layouts = []
    channels_last.encoder.embed_images.layer1.register_forward_hook(
        lambda module, args, output: layouts.append(output.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        assert torch.allclose(channels_last(**inputs)[0], nchw(**inputs)[0], atol=1e-5)
    assert layouts == [True]
    # only the activations change layout: the weights, hence checkpoints, keep the default one
    assert channels_last.encoder.embed_images.conv1.weight.is_contiguous()


def test_compiled_layers_keep_parameter_names_and_outputs(monkeypatch):
    original_compile = nn.Module.compile
    # dynamo's tracing without code generation: checks that the layers compile, in a fraction of the time
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: original_compile(self, backend="eager"))
    inputs = dict(encoder_input(), prev_output_tokens=torch.tensor([[0, 5, 6]] * 2))
    one_layer = dict(encoder_layers=1, decoder_layers=1)
    default, compiled = tiny_model(**one_layer), tiny_model(compile_layers=True, **one_layer)
    assert list(compiled.state_dict()) == list(default.state_dict())
    assert all(layer._compiled_call_impl is not None for layer in compiled.encoder.layers)
    calls = []
    layer = compiled.decoder.layers[0]
    compiled_call = layer._compiled_call_impl
    layer._compiled_call_impl = lambda *args, **kwargs: calls.append(1) or compiled_call(*args, **kwargs)
    with torch.no_grad():
        assert torch.allclose(default(**inputs)[0], compiled(**inputs)[0], atol=1e-5)
        assert len(calls) == 1
        # incremental decoding runs the layers uncompiled (a new cache length at every step), with the same outputs
        encoded = compiled.encoder(**encoder_input())
        full, _ = default.decoder(inputs["prev_output_tokens"], default.encoder(**encoder_input()))
        state = {}
        steps = [compiled.decoder(inputs["prev_output_tokens"][:, :t], encoded, incremental_state=state)[0][:, -1]
                 for t in (1, 2, 3)]
    assert len(calls) == 1
    assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_runs_full_and_incremental_decoding(dtype):
    """fairseq's --bf16 / --fp16 convert the whole model: masks and biases must follow its dtype."""
    model = tiny_model().to(dtype)
    inputs = encoder_input()
    inputs["patch_images"] = inputs["patch_images"].to(dtype)
    inputs["src_tokens"][1, -1] = 1  # padding: -inf in the half-precision bias
    tokens = torch.tensor([[0, 5, 6], [0, 7, 8]])
    with torch.no_grad():
        encoded = model.encoder(**inputs)
        full, _ = model.decoder(tokens, encoded)
        state = {}
        steps = [model.decoder(tokens[:, :t], encoded, incremental_state=state)[0][:, -1] for t in (1, 2, 3)]
    assert full.dtype == dtype and torch.isfinite(full).all()
    assert torch.allclose(torch.stack(steps, dim=1).float(), full.float(), atol=0.1)


def test_bf16_autocast_training_step_has_finite_gradients():
    model = tiny_model(dropout=0.1).train()
    inputs = dict(encoder_input(), prev_output_tokens=torch.tensor([[0, 5, 6]] * 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(**inputs)
        loss = model.get_normalized_probs((logits, None), log_probs=True).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_token_embedding_gradients_are_dense_and_equal_to_a_plain_lookups(monkeypatch):
    inputs = {**encoder_input(), "prev_output_tokens": torch.tensor([[2, 5, 6, 1], [2, 7, 1, 1]])}

    def gradients(model):
        logits, _ = model.train()(**inputs)
        logits.logsumexp(-1).sum().backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    sparse = gradients(tiny_model())
    monkeypatch.setattr(TokenEmbedding, "forward", nn.Embedding.forward)  # dense lookups
    dense = gradients(tiny_model())

    assert sparse.keys() == dense.keys()
    embedding = sparse["encoder.embed_tokens.weight"]
    assert embedding.layout == torch.strided
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-6, rtol=1e-5, msg=name)


def test_token_embedding_reached_only_through_lookups_gets_a_dense_gradient():
    embedding = TokenEmbedding(10, 4, padding_idx=1)
    tokens = torch.tensor([[2, 3, 3, 1]])
    (lookup_gradient,) = torch.autograd.grad(embedding(tokens).sum(), embedding.weight)
    assert lookup_gradient.is_sparse  # the lookup itself makes no vocabulary-sized matrix
    embedding(tokens).sum().backward()
    grad = embedding.weight.grad
    assert grad.layout == torch.strided  # Adam refuses sparse gradients
    assert grad[3].tolist() == [2.0] * 4 and grad[2].tolist() == [1.0] * 4
    assert grad[1].abs().sum() == 0 and grad[0].abs().sum() == 0
    with torch.no_grad():  # no gradient wanted: a plain lookup
        assert torch.equal(embedding(torch.tensor([3])), embedding.weight[3:4])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (4, 2), (FEW_ROWS, 1), (FEW_ROWS + 1, 1), (3, 7)])
def test_linear_matches_f_linear_for_few_and_many_rows(shape, bias):
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=bias)
    x = torch.randn(*shape, 24, requires_grad=True)
    out = layer(x)
    expected = nn.functional.linear(x, layer.weight, layer.bias)
    assert out.shape == (*shape, 40) and out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, layer.weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, layer.weight])
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_linear_few_rows_multiply_weight_by_transposed_input(monkeypatch):
    from unival.models import cpu_linear
    calls = []
    real_linear = cpu_linear.linear
    monkeypatch.setattr(cpu_linear, "linear", lambda *args: calls.append("linear") or real_linear(*args))
    layer = Linear(8, 16)
    layer(torch.randn(1, 2, 8))  # one decoding step of two hypotheses
    assert calls == []
    layer(torch.randn(FEW_ROWS + 1, 8))  # larger inputs: the CPU's chosen library (cpu_linear)
    assert calls == ["linear"]


def test_decoding_layers_use_the_few_row_linear():
    model = tiny_model()
    decoder_layer = model.decoder.layers[0]
    for module in (decoder_layer.self_attn.q_proj, decoder_layer.encoder_attn.out_proj, decoder_layer.fc1,
                   decoder_layer.fc2, model.decoder.self_pos_q_linear, model.decoder.cross_pos_q_linear):
        assert isinstance(module, Linear)


def test_identity_reordering_is_skipped_and_dropping_rows_is_not():
    model = tiny_model()
    tokens = torch.tensor([[0, 5], [0, 7], [0, 9]])
    with torch.no_grad():
        encoded = model.encoder(**encoder_input(batch=3))
        state = {}
        model.decoder(tokens[:, :1], encoded, incremental_state=state)
        self_attn = model.decoder.layers[0].self_attn
        before = self_attn.get_incremental_state(state, "attn_state")["key"]
        model.decoder.reorder_incremental_state_scripting(state, torch.arange(3))
        assert self_attn.get_incremental_state(state, "attn_state")["key"] is before  # nothing copied
        # the first two rows stay in place but the third finished: the caches must shrink
        model.decoder.reorder_incremental_state_scripting(state, torch.arange(2))
        assert self_attn.get_incremental_state(state, "attn_state")["key"].size(0) == 2
        encoded = model.encoder.reorder_encoder_out(encoded, torch.arange(2))
        step, _ = model.decoder(tokens[:2], encoded, incremental_state=state)
        full, _ = model.decoder(tokens[:2], encoded)
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-5)


def test_lookup_gradients_are_added_into_the_output_projections_gradient_without_a_copy(monkeypatch):
    """The shared weight's gradient is the buffer the output projection's backward wrote: the lookups' sparse
    rows were added into it in place rather than into a new vocabulary-sized sum."""
    dense_buffers = []
    real_late_gradient = unival_module.late_gradient

    def recording_late_gradient(weight):
        alias = real_late_gradient(weight)
        alias.register_hook(lambda grad: dense_buffers.append(grad.data_ptr()))
        return alias

    monkeypatch.setattr(unival_module, "late_gradient", recording_late_gradient)
    model = tiny_model().train()
    inputs = {**encoder_input(), "prev_output_tokens": torch.tensor([[2, 5, 6, 1], [2, 7, 1, 1]])}
    logits, _ = model(**inputs)
    logits.logsumexp(-1).sum().backward()
    weight = model.decoder.output_projection.weight
    assert weight is model.encoder.embed_tokens.weight and weight.grad.layout == torch.strided
    assert dense_buffers == [weight.grad.data_ptr()]


def test_no_late_gradient_without_gradients(monkeypatch):
    calls = []
    monkeypatch.setattr(unival_module, "late_gradient", lambda weight: calls.append(weight) or weight)
    model = tiny_model()
    inputs = {**encoder_input(), "prev_output_tokens": torch.tensor([[2, 5, 6, 1], [2, 7, 1, 1]])}
    with torch.no_grad():
        model(**inputs)
    assert calls == []
    model(**inputs)
    assert len(calls) == 1
