import random

import pytest
import torch

from phiforge.config import OptimConfig
from phiforge.lm.model import ModelConfig, Phi3
from phiforge.lm.tokenizer import ChatTokenizer, train_bpe
from phiforge.train.optim import IGNORE, build_optimizer, clip_and_step, cross_entropy, lr_at
from phiforge.train.sft import batches, build_example, collate


def test_lr_schedule_is_linear_warmup_then_linear_decay():
    o = OptimConfig(lr=1.0, warmup_steps=10, final_lr_ratio=0.1)
    lrs = [lr_at(s, 110, o) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)
    assert lr_at(110, 110, o) == pytest.approx(0.1)
    diffs = [b - a for a, b in zip(lrs[10:], lrs[11:])]
    assert max(diffs) == pytest.approx(min(diffs))  # straight line, not cosine


def test_weight_decay_skips_norm_gains():
    model = Phi3(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ffn=32))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == ("norm" not in name), name


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_loss_goes_down_on_a_tiny_run(dtype):
    from phiforge.train.optim import autocast

    torch.manual_seed(0)
    model = Phi3(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ffn=64, max_seq_len=64))
    o = OptimConfig(lr=1e-2, warmup_steps=2)
    opt = build_optimizer(model, o)
    data = torch.randint(0, 64, (4, 33))  # four fixed sequences to memorise
    losses = []
    for step in range(40):
        with autocast(dtype, torch.device("cpu")):
            logits = model(data[:, :-1])
        loss, n = cross_entropy(logits, data[:, 1:])
        (loss / n).backward()
        clip_and_step(model, opt, 1.0)
        losses.append(float(loss.detach()) / n)
    assert losses[0] > 4.0  # about ln(64) at initialisation
    assert losses[-1] < 0.5 * losses[0]


def test_cross_entropy_ignores_masked_targets():
    logits = torch.randn(1, 4, 10)
    y = torch.tensor([[1, IGNORE, 3, IGNORE]])
    loss, n = cross_entropy(logits, y)
    ref = torch.nn.functional.cross_entropy(logits[0, [0, 2]], torch.tensor([1, 3]), reduction="sum")
    assert n == 2 and torch.allclose(loss, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_matches_composite_loss_and_gradient(dtype):
    from phiforge.train import optim

    g = torch.Generator().manual_seed(0)
    n = 2 * optim._CE_ROWS + 37  # several chunks and a ragged last one
    base = (torch.randn(n, 50, generator=g) * 4).to(dtype)
    y = torch.randint(0, 50, (n,), generator=g)
    y[::5] = IGNORE
    mine = base.clone().requires_grad_()
    ref = base.clone().requires_grad_()
    loss, count = cross_entropy(mine, y)
    want = torch.nn.functional.cross_entropy(ref.float(), y, ignore_index=IGNORE, reduction="sum")
    (loss * 0.5).backward()
    (want * 0.5).backward()
    assert count == int((y != IGNORE).sum())
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-3)
    assert mine.grad.dtype == dtype
    torch.testing.assert_close(mine.grad, ref.grad, rtol=0, atol=1e-6 if dtype == torch.float32 else 4e-3)
    assert mine.grad[::5].abs().max() == 0  # ignored rows get no gradient


def test_sft_targets_are_assistant_tokens_only_and_padding_is_pad():
    tok = ChatTokenizer(train_bpe(["What is 2 + 2? The answer is 4."] * 20, vocab_size=300, progress=False))
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "The answer is 4."}]
    x, y = build_example(tok, messages, max_len=256)
    ids, mask = tok.encode_chat(messages)
    assert x == ids[:-1]
    # targets are the next tokens exactly where the next token is assistant content or its <|im_end|>
    kept = [t for t in y if t != IGNORE]
    assert kept == tok.encode("The answer is 4.") + [tok.im_end_id]
    short = build_example(tok, [messages[0], {"role": "assistant", "content": "4"}], max_len=256)
    bx, by = collate([(x, y), short], tok.pad_id)
    n = len(short[0])
    assert (bx[1, n:] == tok.pad_id).all() and (by[1, n:] == IGNORE).all()
    assert tok.pad_id not in (tok.im_end_id, tok.endoftext_id)


def test_length_grouped_batches_cover_each_epoch_once_and_pad_little():
    rng = random.Random(0)
    lengths = [rng.randint(10, 400) for _ in range(1024)]
    grouped = list(batches(1024, 16, 64, seed=3, lengths=lengths, group=32))  # exactly one epoch
    assert sorted(i for b in grouped for i in b) == list(range(1024))  # every example once
    plain = list(batches(1024, 16, 64, seed=3))
    assert sorted(i for b in plain for i in b) == list(range(1024))

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)
    assert padded(grouped) < 0.7 * padded(plain)
    assert list(batches(1024, 16, 64, seed=3, lengths=lengths, group=32))[5].tolist() == grouped[5].tolist()
    # the order of lengths is not the order of training: batches of a window are shuffled
    maxima = [max(lengths[i] for i in b) for b in grouped[:32]]
    assert maxima != sorted(maxima)


def test_a_set_smaller_than_a_window_batches_plainly():
    out = list(batches(10, 4, 6, seed=0, lengths=list(range(10)), group=32))
    assert [b.tolist() for b in out] == [b.tolist() for b in batches(10, 4, 6, seed=0)]
