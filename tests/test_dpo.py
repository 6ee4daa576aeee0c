"""DPO: the loss against hand-derived values, completion log-probs, and a few real steps."""

import math

import pytest
import torch

from phiforge.lm.logprobs import sequence_logps, token_logps
from phiforge.train.dpo import DPOLoss, precompute_reference, train_dpo
from phiforge.errors import PhiforgeError
from phiforge.lm.model import ModelConfig, Phi3

CFG = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ffn=64, max_seq_len=64)
PAD = 0


def tiny(seed=0):
    torch.manual_seed(seed)
    return Phi3(CFG)


def test_loss_and_gradients_match_hand_derivation():
    beta = 0.5
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    pr = torch.tensor([-1.5, -1.0], requires_grad=True)
    rc, rr = torch.tensor([-1.2, -2.0]), torch.tensor([-1.2, -1.5])
    loss, chosen_rewards, rejected_rewards = DPOLoss(beta)(pc, pr, rc, rr)
    loss.backward()
    # z = beta * ((pc - rc) - (pr - rr)): 0.5 * (0.2 + 0.3) = 0.25 and 0.5 * (0.0 - 0.5) = -0.25.
    # loss = mean(-log sigmoid(z)) = (log(1 + e^-0.25) + log(1 + e^0.25)) / 2
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-0.25)) + math.log(1 + math.exp(0.25))) / 2, abs=1e-6)
    # d loss / d pc_i = -(beta / B) * sigmoid(-z_i), and d loss / d pr_i is its negative.
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = torch.tensor([-0.25 * sig(-0.25), -0.25 * sig(0.25)])
    assert torch.allclose(pc.grad, expected, atol=1e-7) and torch.allclose(pr.grad, -expected, atol=1e-7)
    assert torch.allclose(chosen_rewards, torch.tensor([0.1, 0.0])) and torch.allclose(rejected_rewards,
                                                                                       torch.tensor([-0.15, 0.25]))
    assert not chosen_rewards.requires_grad


def naive_logp(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0].double(), dim=-1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(completion))


def test_sequence_logps_matches_naive_sum_and_ignores_padding():
    model = tiny().eval()
    prompts = [[3, 4, 5], [7], [9, 10, 11, 12, 13]]
    completions = [[6], [8, 9, 10, 11, 12, 13], [14, 15]]
    with torch.no_grad():
        batched = sequence_logps(model, prompts, completions, PAD)
        alone = [sequence_logps(model, [p], [c], PAD).item() for p, c in zip(prompts, completions)]
        shared = sequence_logps(model, [1, 2], [[3], [3, 4]], PAD)
    naive = [naive_logp(model, p, c) for p, c in zip(prompts, completions)]
    assert batched.tolist() == pytest.approx(naive, abs=1e-4)
    assert batched.tolist() == pytest.approx(alone, abs=1e-5)  # right padding changes nothing
    assert shared.tolist() == pytest.approx([naive_logp(model, [1, 2], [3]), naive_logp(model, [1, 2], [3, 4])],
                                            abs=1e-4)
    logps, mask = token_logps(model, prompts, completions, PAD)
    assert mask.sum(-1).tolist() == [1, 6, 2] and logps[~mask].abs().max() == 0


def test_sequence_logps_gradient_reaches_the_model():
    model = tiny()
    sequence_logps(model, [[3, 4]], [[5, 6]], PAD).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def make_pairs(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        prompt = torch.randint(1, CFG.vocab_size, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g)
        chosen, rejected = torch.randperm(CFG.vocab_size - 1, generator=g)[:2] + 1
        pairs.append({"prompt_ids": prompt.tolist(), "chosen_ids": [int(chosen)], "rejected_ids": [int(rejected)]})
    pairs[0]["chosen_ids"] += [5, 6]  # whole responses train the same way as single pivotal tokens
    return pairs


def margins(model, pairs, ref):
    with torch.no_grad():
        chosen = sequence_logps(model, [p["prompt_ids"] for p in pairs], [p["chosen_ids"] for p in pairs], PAD)
        rejected = sequence_logps(model, [p["prompt_ids"] for p in pairs], [p["rejected_ids"] for p in pairs], PAD)
    return (chosen - ref[:, 0]) - (rejected - ref[:, 1])


def test_a_few_dpo_steps_raise_the_chosen_margin():
    model, pairs = tiny(), make_pairs()
    ref = precompute_reference(model, pairs, pad_id=PAD, batch_size=5)
    assert ref.shape == (len(pairs), 2) and not ref.requires_grad
    assert margins(model.eval(), pairs, ref).abs().max() < 1e-4  # the reference is the untrained policy
    history = train_dpo(model, pairs, ref, beta=0.1, lr=1e-2, steps=8, batch_size=6, pad_id=PAD)
    after = margins(model.eval(), pairs, ref)
    assert len(history) == 8 and history[-1]["loss"] < history[0]["loss"]
    assert after.mean() > 0.5 and (after > 0).float().mean() >= 0.9


def test_bad_pairs_are_user_errors():
    model = tiny()
    with pytest.raises(PhiforgeError, match="rejected_ids"):
        precompute_reference(model, [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": []}], pad_id=PAD)
    with pytest.raises(PhiforgeError, match="no DPO pairs"):
        train_dpo(model, [], torch.zeros(0, 2), steps=1, batch_size=1, pad_id=PAD)
    pairs = make_pairs(3)
    with pytest.raises(PhiforgeError, match="shape"):
        train_dpo(model, pairs, torch.zeros(2, 2), steps=1, batch_size=1, pad_id=PAD)


def test_large_logits_go_through_the_head_in_chunks_with_the_same_values_and_gradients(monkeypatch):
    """When a batch's [B, T, V] logits would pass CHUNK_ELEMENTS, only the completion positions go through the head,
    a few rows at a time and recomputed in backward: same log-probs and gradients as the whole-logits path."""
    import phiforge.lm.logprobs as logprobs

    prompts = [[3, 4, 5], [7], [9, 10, 11, 12, 13]]
    completions = [[6], [8, 9, 10, 11, 12, 13], [14, 15]]
    runs = {}
    for name, budget in (("whole", logprobs.CHUNK_ELEMENTS), ("chunked", 3 * CFG.vocab_size)):  # 3 rows per chunk
        monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", budget)
        model = tiny()
        seen = []
        model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
        logps = sequence_logps(model, prompts, completions, PAD)
        logps.sum().backward()
        runs[name] = logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, seen
    assert runs["whole"][2] == [(3, 6, CFG.vocab_size)]
    assert runs["chunked"][2] == [(3, CFG.vocab_size)] * 3 * 2  # 9 targets in 3 chunks, each run again in backward
    assert torch.allclose(runs["chunked"][0], runs["whole"][0], atol=1e-6)
    for n, g in runs["whole"][1].items():
        assert torch.allclose(runs["chunked"][1][n], g, atol=1e-6), n
