"""encode_sharded under `accelerate launch` (tests/test_encode.py): rank 0 saves what every rank got."""

import sys

import torch

from embedtune.distributed import init_process_group_from_env
from embedtune.encode import encode_sharded
from embedtune.model import Encoder, ModelConfig

model_dir, out = sys.argv[1], sys.argv[2]
assert init_process_group_from_env()
torch.set_num_threads(1)
encoder = Encoder.load(ModelConfig(name=model_dir, pooling="mean"))
texts = [" ".join(["gene", "heart", "blood", "cell", "fever"][: 1 + i % 5]) + f" {i}" for i in range(23)]
emb = encode_sharded(encoder, texts, "passage", batch_size=4)
gathered = [torch.empty_like(emb) for _ in range(2)]
torch.distributed.all_gather(gathered, emb)
assert torch.equal(gathered[0], gathered[1]), "ranks disagree"
if torch.distributed.get_rank() == 0:
    torch.save({"texts": texts, "emb": emb}, out)
torch.distributed.destroy_process_group()  # gloo's threads left running at exit can abort a rank
