"""A GPU trainer for the GPU evidence ladders: transformers' GPT-2 (random init from GPT2Config, fp32, AdamW),
random token batches made on the GPU (nothing from a hub), validation every ``check_interval`` steps over
``limit_batches`` batches. It speaks the metrics protocol through ``hlrp_ladder.integrations.Meter`` (no regex).

    python examples/gpt2_train.py batch_size=16 max_steps=30 check_interval=10 limit_batches=2 [leak=true]

``leak=true`` reproduces a classic GPU leak: a metric keeps a slice of every step's last hidden state, and the
slice is a view, so each step's whole [batch, seq, 768] hidden-state tensor stays alive (3 MiB per sample per
step in fp32). It passes a short probe and dies hours into the long run.
"""
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hlrp_ladder.integrations import Meter


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    bs, steps = int(args.get("batch_size", 8)), int(args.get("max_steps", 20))
    every, val_batches = int(args.get("check_interval", 10)), int(args.get("limit_batches", 1))
    seq, leak = int(args.get("seq_len", 1024)), args.get("leak", "false").lower() == "true"
    torch.manual_seed(0)
    config = GPT2Config()
    model = GPT2LMHeadModel(config).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    meter, kept = Meter(bs), []

    def batch() -> torch.Tensor:
        return torch.randint(0, config.vocab_size, (bs, seq), device="cuda")

    meter.start(0)
    for step in range(1, steps + 1):
        ids = batch()
        out = model(ids, labels=ids, output_hidden_states=leak)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if leak:
            kept.append(out.hidden_states[-1].detach()[:, -1])   # a view: the whole tensor stays alive
        torch.cuda.synchronize()
        meter.train(step, loss=out.loss.item())
        if step % every == 0:
            model.eval()
            with torch.no_grad():
                losses = [model(ids, labels=ids).loss.item() for ids in (batch() for _ in range(val_batches))]
            model.train()
            meter.val_end(step, val_loss=sum(losses) / len(losses))
    meter.done(steps)
    print(f"done: bs={bs} steps={steps} max_reserved={torch.cuda.max_memory_reserved() / 2**30:.2f} GiB", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
