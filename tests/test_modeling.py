"""Core model: config, save/load, splice checks, MRC gate masking, SPAE, generation and candidate scoring."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_speeder, tiny_tokenizer
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from speeder_hf import SpeederConfig, SpeederForSequentialRec, check_tokenizer
from speeder_hf.serving.loading import load_model_and_tokenizer

PROMPT = "a user <|pos_1|><item> <|pos_2|><item> candidates ( A ) <item> ( B ) <item> answer :"
ITEMS = torch.tensor([1, 2, 5, 6])
RECENCY = torch.tensor([2, 1, 0, 0])


def encode(tokenizer, prompts=(PROMPT,)):
    return tokenizer(list(prompts), return_tensors="pt", padding=True)


def logits(model, enc, items=ITEMS, recency=RECENCY):
    with torch.no_grad():
        return model(**enc, item_ids=items, item_recency=recency).logits


def test_config_round_trip_keeps_modality_order(tmp_path):
    config = SpeederConfig(modalities=["image", "text", "id"], modality_dims=[7, 5, 3])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SpeederConfig)
    assert loaded.modalities == ["image", "text", "id"] and loaded.modality_dims == [7, 5, 3]


def test_config_rejects_an_unknown_answer_loss():
    with pytest.raises(ValueError, match=r"answer_loss must be one of \('labels', 'vocab'\), got 'ranking'"):
        SpeederConfig(answer_loss="ranking")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("tie", [True, False])
def test_save_and_auto_load_give_identical_logits(tmp_path, arch, tie):
    model, tokenizer = tiny_speeder(arch, tie=tie)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for auto in (AutoModel, AutoModelForCausalLM):
        loaded = auto.from_pretrained(tmp_path)
        assert isinstance(loaded, SpeederForSequentialRec)
        assert loaded.config.tie_word_embeddings == tie
        enc = encode(tokenizer)
        torch.testing.assert_close(logits(model, enc), logits(loaded, enc), atol=1e-5, rtol=0)
    untied = model.language_model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    assert untied != tie


def test_placeholder_count_mismatch_raises(model_and_tokenizer):
    speeder, tokenizer = model_and_tokenizer
    enc = encode(tokenizer)
    with pytest.raises(ValueError, match="placeholders do not match.*4 placeholders but 3 items"):
        speeder(**enc, item_ids=ITEMS[:3])


def test_missing_items_for_placeholders_raise(model_and_tokenizer):
    speeder, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="Pass item_ids"):
        speeder(**encode(tokenizer))


def test_unknown_item_id_raises_naming_it(model_and_tokenizer):
    speeder, tokenizer = model_and_tokenizer
    with pytest.raises(KeyError, match="Unknown item id 99"):
        speeder(**encode(tokenizer), item_ids=torch.tensor([1, 2, 99, 3]))


def test_nan_features_raise(model_and_tokenizer):
    speeder, tokenizer = model_and_tokenizer
    features = {m: torch.randn(4, d) for m, d in zip(speeder.config.modalities, speeder.config.modality_dims)}
    features["image"][2, 0] = float("nan")
    with pytest.raises(ValueError, match="'image' contain NaN or inf \\(rows \\[2\\]\\)"):
        speeder(**encode(tokenizer), item_features=features)
    presence = torch.ones(4, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="NaN or inf"):
        speeder.set_item_features(features, presence)


def test_wrong_feature_dimension_raises(model_and_tokenizer):
    speeder, _ = model_and_tokenizer
    features = {m: torch.randn(4, d) for m, d in zip(speeder.config.modalities, speeder.config.modality_dims)}
    features["text"] = torch.randn(4, 99)
    with pytest.raises(ValueError, match="'text' must be \\(4, 12\\)"):
        speeder.set_item_features(features, torch.ones(4, 3, dtype=torch.bool))


def test_tokenizer_with_other_ids_raises(model_and_tokenizer, tmp_path):
    speeder, tokenizer = model_and_tokenizer
    check_tokenizer(tokenizer, speeder.config)
    other = tiny_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    from speeder_hf import add_speeder_tokens

    add_speeder_tokens(other, SpeederConfig(**{k: getattr(speeder.config, k) for k in ("max_history_len",)}))
    with pytest.raises(ValueError, match="disagree on .* token id"):
        check_tokenizer(other, speeder.config)
    speeder.save_pretrained(tmp_path)
    other.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Load the tokenizer saved with this model"):
        load_model_and_tokenizer(str(tmp_path))


def test_gate_gives_zero_weight_to_missing_and_inactive_modalities(model_and_tokenizer):
    speeder, tokenizer = model_and_tokenizer
    enc = encode(tokenizer)
    items = torch.tensor([3, 2, 5, 6])  # item 3 has no image
    with torch.no_grad():
        gates = speeder(**enc, item_ids=items).gate_weights
    image = speeder.config.modalities.index("image")
    assert gates[0, image] == 0 and (gates[1:, image] > 0).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(4))

    speeder.set_active_modalities(["text"])
    with torch.no_grad():
        gates = speeder(**enc, item_ids=items).gate_weights
    text = speeder.config.modalities.index("text")
    assert (gates[:, text] == 1).all() and gates.sum() == 4
    speeder.set_active_modalities(["text", "id"])
    with torch.no_grad():
        out_a = speeder(**enc, item_ids=items).logits
        features, _ = speeder.item_table(items)
    # Changing an inactive modality's features must not change anything.
    explicit = dict(zip(speeder.config.modalities, features))
    explicit["image"] = torch.randn_like(explicit["image"]) * 100
    with torch.no_grad():
        out_b = speeder(**enc, item_features=explicit).logits
    torch.testing.assert_close(out_a, out_b)
    with pytest.raises(ValueError, match="Unknown modalities"):
        speeder.set_active_modalities(["audio"])


def test_mean_of_experts_without_gate():
    model, tokenizer = tiny_speeder(mrc_gate=False)
    with torch.no_grad():
        gates = model(**encode(tokenizer), item_ids=torch.tensor([3, 2, 5, 6])).gate_weights
    torch.testing.assert_close(gates[0], torch.tensor([0.5, 0.0, 0.5]))
    torch.testing.assert_close(gates[1], torch.full((3,), 1 / 3))


def mean_pairwise_cosine(tokens: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(tokens.flatten(1), dim=-1)
    similarity = unit @ unit.T
    return similarity[~torch.eye(len(unit), dtype=torch.bool)].mean().item()


@pytest.mark.parametrize("center", [True, False])
def test_item_centering_keeps_items_apart_when_they_share_a_large_component(center):
    model, _ = tiny_speeder(mrc_center_items=center)
    mrc = model.mrc.train()
    with torch.no_grad():  # an expert output dominated by one shared vector, as training drifts into
        mrc.experts[0].fc2.bias.copy_(5.0 * torch.randn(mrc.experts[0].fc2.bias.shape))
        mrc.experts[0].fc2.weight.mul_(0.05)
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(64, d, generator=generator) for d in model.config.modality_dims]
    mask = torch.zeros(64, 3, dtype=torch.bool)
    mask[:, 0] = True  # text only
    tokens, _ = mrc(features, mask)
    if center:
        assert mean_pairwise_cosine(tokens) < 0.2
        running = mrc.center.running_mean.clone()
        assert running.abs().sum() > 0  # the training batch moved the running mean
        mrc.eval()
        eval_tokens, _ = mrc(features, mask)  # inference subtracts the running mean, not the batch's
        assert torch.isfinite(eval_tokens).all() and torch.equal(mrc.center.running_mean, running)
    else:
        assert mean_pairwise_cosine(tokens) > 0.9


def test_spae_parts_change_output_only_when_enabled():
    full, tok_full = tiny_speeder()
    enc = encode(tok_full)
    base = logits(full, encode(tok_full))
    # Relative: the recency embedding changes the output; without recency indices it is not applied.
    torch.testing.assert_close(
        logits(full, encode(tok_full), recency=None),
        logits(full, encode(tok_full), recency=torch.zeros(4, dtype=torch.long)),
    )
    assert not torch.allclose(base, logits(full, encode(tok_full), recency=None))
    # Absolute: the position-token embeddings come from SPAE and change the output.
    with torch.no_grad():
        full.spae.absolute.weight.add_(1.0)
    assert not torch.allclose(base, logits(full, encode(tok_full)))

    off, tok_off = tiny_speeder(spae_absolute=False, spae_relative=False)
    assert off.spae.absolute is None and off.spae.relative is None
    no_pos = "a user <item> <item> candidates ( A ) <item> ( B ) <item> answer :"
    enc_off = encode(tok_off, [no_pos])
    torch.testing.assert_close(logits(off, enc_off), logits(off, enc_off, recency=None))
    assert enc.input_ids.shape[1] > enc_off.input_ids.shape[1]


def test_generate_equals_manual_greedy_loop(model_and_tokenizer):
    speeder, tokenizer = model_and_tokenizer
    tokenizer.padding_side = "left"
    enc = encode(tokenizer, [PROMPT, "a user <|pos_1|><item> candidates ( A ) <item> ( B ) <item> answer :"])
    items = torch.tensor([1, 2, 5, 6, 3, 5, 6])
    recency = torch.tensor([2, 1, 0, 0, 1, 0, 0])
    generated = speeder.generate(**enc, item_ids=items, item_recency=recency, max_new_tokens=4, do_sample=False)
    embeds, _ = speeder.embed_inputs(enc.input_ids, items, item_recency=recency)
    mask = enc.attention_mask
    manual = []
    banned = speeder.never_generate_ids
    with torch.no_grad():
        for _ in range(4):
            out = speeder.language_model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
            out[:, banned] = float("-inf")
            nxt = out.argmax(-1)
            manual.append(nxt)
            embeds = torch.cat([embeds, speeder.get_input_embeddings()(nxt)[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert generated.tolist() == torch.stack(manual, 1).tolist()
    assert not set(generated.flatten().tolist()) & set(banned)


@pytest.mark.parametrize("pointer", [True, False])
def test_generate_warns_that_it_ignores_the_candidate_pointer(pointer, caplog):
    speeder, tokenizer = tiny_speeder(candidate_pointer=pointer)
    assert (speeder.candidate_pointer is not None) == pointer
    tokenizer.padding_side = "left"
    enc = encode(tokenizer, ["a user <|pos_1|><item> candidates ( A ) <item> ( B ) <item> answer :"])
    logging.Logger.warning_once.cache_clear()  # shown once per process; earlier tests may have shown it
    with caplog.at_level(logging.WARNING):
        items = {"item_ids": torch.tensor([1, 5, 6]), "item_recency": torch.tensor([1, 0, 0])}
        speeder.generate(**enc, **items, max_new_tokens=1)
    assert ("ignores the candidate pointer" in caplog.text) == pointer


def test_generate_rejects_right_padding(model_and_tokenizer):
    speeder, tokenizer = model_and_tokenizer
    enc = encode(tokenizer, [PROMPT, "a user <|pos_1|><item> candidates ( A ) <item> ( B ) <item> answer :"])
    with pytest.raises(ValueError, match="left-padded"):
        speeder.generate(**enc, item_ids=torch.tensor([1, 2, 5, 6, 3, 5, 6]), max_new_tokens=2)


@pytest.mark.parametrize("side", ["left", "right"])
def test_score_candidates_agrees_with_full_forward(side):
    speeder, tokenizer = tiny_speeder(candidate_pointer=False)
    speeder.eval()
    tokenizer.padding_side = side
    short = "a user <|pos_1|><item> candidates ( A ) <item> ( B ) <item> answer :"
    enc = encode(tokenizer, [PROMPT, short])
    items = torch.tensor([1, 2, 5, 6, 3, 5, 6])
    scores = speeder.score_candidates(**enc, num_candidates=2, item_ids=items)
    full = logits(speeder, enc, items=items, recency=None)
    last = enc.attention_mask.shape[1] - 1 if side == "left" else enc.attention_mask.sum(-1) - 1
    rows = [full[0, last if side == "left" else last[0]], full[1, last if side == "left" else last[1]]]
    expected = torch.stack(rows)[:, speeder.config.label_token_ids[:2]]
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_gradient_checkpointing_runs(model_and_tokenizer):
    speeder, tokenizer = model_and_tokenizer
    speeder.train()
    speeder.config.answer_loss = "vocab"  # language-model labels on every token
    enc = encode(tokenizer)
    watched = {"mrc": speeder.mrc.experts[0].fc1.weight, "spae": speeder.spae.absolute.weight}
    speeder(**enc, item_ids=ITEMS, item_recency=RECENCY, labels=enc.input_ids).loss.backward()
    plain = {name: weight.grad.clone() for name, weight in watched.items()}
    speeder.zero_grad()
    speeder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    speeder(**enc, item_ids=ITEMS, item_recency=RECENCY, labels=enc.input_ids).loss.backward()
    for name, weight in watched.items():  # recomputing activations gives the same, non-zero gradients
        assert plain[name].abs().sum() > 0, name
        torch.testing.assert_close(weight.grad, plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_labelled_positions_loss_equals_full_loss(arch):
    model, tokenizer = tiny_speeder(arch, candidate_pointer=False)
    tokenizer.padding_side = "right"
    enc = encode(tokenizer, [PROMPT + " A", "a user <|pos_1|><item> candidates ( A ) <item> ( B ) <item> answer : B"])
    labels = torch.full_like(enc.input_ids, -100)
    lengths = enc.attention_mask.sum(-1)
    labels[0, lengths[0] - 1] = enc.input_ids[0, lengths[0] - 1]
    labels[1, lengths[1] - 1] = enc.input_ids[1, lengths[1] - 1]
    items = torch.tensor([1, 2, 5, 6, 3, 5, 6])
    model.config.answer_loss = "vocab"
    fast = model(**enc, item_ids=items, labels=labels)
    model.config.labelled_logits_only = False
    full = model(**enc, item_ids=items, labels=labels)
    torch.testing.assert_close(fast.loss, full.loss, atol=1e-5, rtol=0)
    assert fast.logits.shape[1] == 2 and full.logits.shape[1] == enc.input_ids.shape[1]
    model.config.labelled_logits_only = True
    summed = model(**enc, item_ids=items, labels=labels, num_items_in_batch=torch.tensor(4)).loss
    torch.testing.assert_close(summed, fast.loss / 2, atol=1e-5, rtol=0)


def test_label_softmax_loss_is_cross_entropy_over_the_candidate_labels():
    model, tokenizer = tiny_speeder("llama", candidate_pointer=False)
    tokenizer.padding_side = "right"
    label_ids = model.config.label_token_ids[: model.config.num_candidates]
    prompts = [PROMPT, "a user <|pos_1|><item> candidates ( A ) <item> ( B ) <item> answer :"]
    enc = encode(tokenizer, prompts)
    lengths = enc.attention_mask.sum(-1)
    answers = [label_ids[0], label_ids[1]]  # " A", " B"
    input_ids = torch.cat([enc.input_ids, torch.full_like(enc.input_ids[:, :1], tokenizer.pad_token_id)], 1)
    attention_mask = torch.cat([enc.attention_mask, torch.zeros_like(enc.attention_mask[:, :1])], 1)
    labels = torch.full_like(input_ids, -100)
    for row, (length, answer) in enumerate(zip(lengths.tolist(), answers)):
        input_ids[row, length], attention_mask[row, length], labels[row, length] = answer, 1, answer
    items = torch.tensor([1, 2, 5, 6, 3, 5, 6])
    loss = model(input_ids=input_ids, attention_mask=attention_mask, item_ids=items, labels=labels).loss

    model.config.answer_loss = "vocab"
    full = model(input_ids=input_ids, attention_mask=attention_mask, item_ids=items).logits  # (B, S, V)
    answer_logits = full[torch.arange(2), lengths - 1][:, label_ids]  # (B, C): the position before the answer
    expected = torch.nn.functional.cross_entropy(answer_logits, torch.tensor([0, 1]))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    vocab_loss = model(input_ids=input_ids, attention_mask=attention_mask, item_ids=items, labels=labels).loss
    vocab_expected = torch.nn.functional.cross_entropy(full[torch.arange(2), lengths - 1], torch.tensor(answers))
    torch.testing.assert_close(vocab_loss, vocab_expected, atol=1e-5, rtol=0)  # the softmax over the whole vocabulary
    assert vocab_loss > loss

    model.config.answer_loss = "labels"
    labels[0, lengths[0]] = tokenizer.eos_token_id
    with pytest.raises(ValueError, match="candidate label token"):
        model(input_ids=input_ids, attention_mask=attention_mask, item_ids=items, labels=labels)
