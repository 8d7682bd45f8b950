"""The candidate pointer: where it finds candidates, what it adds to the label logits, and that it trains."""

import pytest
import torch
from conftest import tiny_speeder

TWO_CANDIDATES = "a user <|pos_1|><item> <|pos_2|><item> candidates ( A ) <item> ( B ) <item> answer :"
THREE_CANDIDATES = "a user <|pos_1|><item> candidates ( A ) <item> ( B ) <item> ( C ) <item> answer :"
ITEMS = torch.tensor([1, 2, 5, 6, 3, 5, 6, 7])  # row 0: 2 history + 2 candidates; row 1: 1 history + 3 candidates
RECENCY = torch.tensor([2, 1, 0, 0, 1, 0, 0, 0])


def encoded(tokenizer, side="right"):
    tokenizer.padding_side = side
    return tokenizer([TWO_CANDIDATES, THREE_CANDIDATES], return_tensors="pt", padding=True)


def randomise_key(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.candidate_pointer.key.copy_(torch.randn(model.candidate_pointer.key.shape, generator=generator))


def test_candidate_positions_follow_the_written_order_and_mark_missing_candidates():
    model, tokenizer = tiny_speeder()
    enc = encoded(tokenizer)
    positions, valid = model.candidate_pointer.candidate_positions(enc.input_ids, RECENCY, num_candidates=5)
    slots = [(row == model.config.item_token_id).nonzero().flatten().tolist() for row in enc.input_ids]
    assert positions[0, :2].tolist() == slots[0][2:] and positions[1, :3].tolist() == slots[1][1:]
    assert valid.tolist() == [[True, True, False, False, False], [True, True, True, False, False]]
    with pytest.raises(ValueError, match="item_recency"):
        model.candidate_pointer.candidate_positions(enc.input_ids, None, num_candidates=5)
    with pytest.raises(ValueError, match="more than num_candidates=2"):
        model.candidate_pointer.candidate_positions(enc.input_ids, RECENCY, num_candidates=2)
    with pytest.raises(ValueError, match="7 item recencies for 8 placeholders"):
        model.candidate_pointer.candidate_positions(enc.input_ids, RECENCY[:7], num_candidates=5)


def test_training_without_input_ids_is_a_clear_error():
    model, tokenizer = tiny_speeder()
    enc = encoded(tokenizer)
    embeds, _ = model.embed_inputs(enc.input_ids, ITEMS, item_recency=RECENCY)
    with pytest.raises(ValueError, match="pass input_ids"):
        model(inputs_embeds=embeds, attention_mask=enc.attention_mask, labels=enc.input_ids)


def test_fresh_pointer_adds_nothing():
    model, tokenizer = tiny_speeder()
    assert model.candidate_pointer.key.abs().max() == 0
    enc = encoded(tokenizer, "left")
    plain, _ = tiny_speeder(candidate_pointer=False)
    plain.load_state_dict(model.state_dict(), strict=False)
    kwargs = {"item_ids": ITEMS, "item_recency": RECENCY, "num_candidates": 3}
    torch.testing.assert_close(model.score_candidates(**enc, **kwargs), plain.score_candidates(**enc, **kwargs))


@pytest.mark.parametrize("side", ["left", "right"])
def test_scores_are_label_logits_plus_the_bilinear_pointer(side):
    model, tokenizer = tiny_speeder()
    randomise_key(model)
    enc = encoded(tokenizer, side)
    scores = model.score_candidates(**enc, item_ids=ITEMS, item_recency=RECENCY, num_candidates=3)  # (2, 3)

    pointer = model.candidate_pointer
    label_ids = model.config.label_token_ids[:3]
    for row in range(2):
        length = int(enc.attention_mask[row].sum())
        real = enc.attention_mask[row].bool()
        part = slice(0, 4) if row == 0 else slice(4, 8)
        embeds, _ = model.embed_inputs(enc.input_ids[row : row + 1, real], ITEMS[part], item_recency=RECENCY[part])
        with torch.no_grad():
            out = model.language_model(inputs_embeds=embeds, output_hidden_states=True)
        hidden = out.hidden_states[-1][0]  # (length, d)
        slots = (enc.input_ids[row, real] == model.config.item_token_id).nonzero().flatten()
        candidates = slots[-(2 if row == 0 else 3) :]
        answer = hidden[length - 1]
        expected = []
        for c, label in enumerate(label_ids):
            bonus = 0.0
            if c < len(candidates):
                bonus = float((pointer.query @ answer) @ (pointer.key @ hidden[candidates[c]])) * pointer.scale
            expected.append(float(out.logits[0, length - 1, label]) + bonus)
        n = len(candidates)
        torch.testing.assert_close(scores[row, :n], torch.tensor(expected[:n]), atol=1e-4, rtol=0)


def test_label_loss_trains_the_pointer():
    model, tokenizer = tiny_speeder()
    randomise_key(model)
    model.train()
    tokenizer.padding_side = "right"
    enc = tokenizer([TWO_CANDIDATES + " B", THREE_CANDIDATES + " C"], return_tensors="pt", padding=True)
    labels = torch.full_like(enc.input_ids, -100)
    lengths = enc.attention_mask.sum(-1)
    for row in range(2):
        labels[row, lengths[row] - 1] = enc.input_ids[row, lengths[row] - 1]
    out = model(**enc, item_ids=ITEMS, item_recency=RECENCY, labels=labels)
    out.loss.backward()
    assert model.candidate_pointer.key.grad.abs().sum() > 0 and model.candidate_pointer.query.grad.abs().sum() > 0
    assert out.hidden_states is None  # read by the pointer, not handed back to the Trainer

    # The loss is the cross-entropy over the label scores that score_candidates ranks by.
    model.eval()
    prompts = tokenizer([TWO_CANDIDATES, THREE_CANDIDATES], return_tensors="pt", padding=True)
    scores = model.score_candidates(**prompts, item_ids=ITEMS, item_recency=RECENCY)  # (2, 5)
    expected = torch.nn.functional.cross_entropy(scores, torch.tensor([1, 2]))
    with torch.no_grad():
        loss = model(**enc, item_ids=ITEMS, item_recency=RECENCY, labels=labels).loss
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


def test_pointer_is_off_where_candidates_have_no_slot():
    assert tiny_speeder(answer_mode="title")[0].candidate_pointer is None
    assert tiny_speeder(prompt_style="text")[0].candidate_pointer is None
    assert tiny_speeder(candidate_pointer=False)[0].candidate_pointer is None
