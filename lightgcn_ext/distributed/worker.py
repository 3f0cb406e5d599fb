"""`DistributedWorker`: the lightgcn_ext.training `Worker` of one process of a
distributed run."""
import json

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..model import LightGCN
from ..training import make_optimizer, make_sampler, run_files
from ..training.step import load_optimizer_state
from ..training.resume import apply_lr
from .exchange import collective, fetch_rows
from .graph import DistributedGraph
from .partition import initial_rows, interaction_degree, owned_edges, partition
from .propagation import evaluate_distributed, propagate_distributed


class DistributedWorker:
    """This rank's rows of the model and of Adam, its share of the graph, and
    the sampler every rank runs alike: the `Worker` that
    lightgcn_ext.training.train_loop steps, evaluates and checkpoints."""

    def __init__(self, config, data, device, group=None):
        self.config, self.data, self.device, self.group = config, data, device, group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.is_main = self.rank == 0
        bounds = partition(interaction_degree(data), self.world_size)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        self.graph = DistributedGraph(owned_edges(data.train.to(device), data.num_users, lo, hi),
                                      interaction_degree(data).to(device), bounds, group)
        self.weight = torch.nn.Parameter(
            initial_rows(data.num_nodes, config.dim, lo, hi, config.seed).to(device))
        self.alpha = LightGCN(1, 1, config.layers).alpha.to(device)
        self.optimizer = make_optimizer([self.weight], config)
        self.sampler, self.generator = make_sampler(config, data, device)
        self.num_parameters = data.num_nodes * config.dim

    def step(self, users, positives, negatives):
        """One Adam step on the global batch, as lightgcn_ext.training.bpr_step: the BPR loss
        of this rank's slice and the L2 term of the nodes it owns, each
        divided by the global batch size, so that the ranks' losses and
        gradients add up to the single process's. Returns this rank's part."""
        size, num_users = users.numel(), self.data.num_users
        nodes = torch.stack([users, positives + num_users, negatives + num_users])
        self.optimizer.zero_grad(set_to_none=True)  # first, as lightgcn_ext.training.bpr_step
        embedding = propagate_distributed(self.graph, self.weight, self.alpha)
        user_emb, pos_emb, neg_emb = fetch_rows(embedding, nodes, self.graph.bounds, self.group)
        del embedding  # the rows are copies: [num_owned, d] less through the backward
        pos_scores = (user_emb * pos_emb).sum(dim=-1)
        neg_scores = (user_emb * neg_emb).sum(dim=-1)
        # model.BPRLoss with lambda_reg = reg / 2 over all 3 * size batch nodes,
        # as sums (never a mean over a slice, which may be empty).
        flat = nodes.view(-1)
        owned = flat[(flat >= self.graph.lo) & (flat < self.graph.hi)] - self.graph.lo
        # A sparse gradient: a dense one would stay alive through the backward.
        owned_rows = F.embedding(owned, self.weight, sparse=True)
        loss = (-F.logsigmoid(pos_scores - neg_scores).sum()
                + self.config.reg / 2 * owned_rows.pow(2).sum()) / size
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def mean_loss(self, loss_sum, steps):
        collective(dist.all_reduce, loss_sum, group=self.group)
        return loss_sum.item() / steps

    @torch.no_grad()
    def evaluate(self, split):
        self.optimizer.zero_grad(set_to_none=True)  # the last step's: not kept through this
        embedding = propagate_distributed(self.graph, self.weight, self.alpha)
        data = self.data
        exclude = [data.train] if split == "valid" else \
            [data.train] + ([] if data.valid is None else [data.valid])
        return evaluate_distributed(embedding, self.graph.bounds, data.num_users,
                                    data.valid if split == "valid" else data.test, exclude=exclude,
                                    ks=tuple(self.config.topk), group=self.group)

    def set_lr(self, lr):
        apply_lr(self.optimizer, lr)

    def agree(self, flag):
        """Rank 0's flag on every rank: rank 0's clock decides when the
        run's files are due, and saving them is collective."""
        decision = torch.tensor([int(flag)], device=self.device)
        collective(dist.broadcast, decision, group=self.group, group_src=0)
        return bool(decision.item())

    def keep_best(self, epoch):
        """None: a distributed run keeps no best weights (its rows are spread
        over the processes; the last checkpoint is what it keeps)."""
        return None

    def save_best(self, out):
        pass

    def describe_device(self):
        return dict(run_files.describe_device(self.device), world_size=self.world_size,
                    backend=dist.get_backend(self.group))

    # ------------------------------------------------------------ checkpoints
    def _shard_name(self, epoch):
        return f"checkpoint.epoch{epoch}.rank{self.rank}-of-{self.world_size}.pt"

    def save(self, out, fingerprint, state):
        """Each rank's shard, then the index that names them (rank 0); the
        shards of older epochs go only once the new index is in place, so a
        kill at any moment leaves a complete checkpoint."""
        epoch = state["epoch"]
        shard = dict(format=run_files.CHECKPOINT_FORMAT, epoch=epoch, weight=self.weight.detach(),
                     optimizer=self.optimizer.state_dict(),
                     rng=run_files.rng_state(self.generator))
        run_files.atomic_write(out / self._shard_name(epoch), lambda f: torch.save(shard, f))
        collective(dist.barrier, group=self.group)
        if self.is_main:
            index = dict(format=run_files.CHECKPOINT_FORMAT, world_size=self.world_size,
                         bounds=self.graph.bounds, epoch=epoch, fingerprint=fingerprint,
                         state=state, shards=[self._shard_name(epoch).replace(
                             f"rank{self.rank}-", f"rank{r}-") for r in range(self.world_size)])
            run_files.atomic_write(out / run_files.DIST_INDEX, json.dumps(index))
        collective(dist.barrier, group=self.group)
        self._remove_shards(out, keep=self._shard_name(epoch))

    def _remove_shards(self, out, keep):
        for path in out.glob(f"checkpoint.epoch*.rank{self.rank}-of-*.pt"):
            if path.name != keep:
                path.unlink()

    def load(self, out, fingerprint):
        path = out / run_files.DIST_INDEX
        if not path.exists():
            if (out / run_files.CHECKPOINT).exists():
                raise ValueError(f"{out} holds a checkpoint of a single process: resume it "
                                 f"without torchrun (its rows and optimizer state are not "
                                 f"partitioned for {self.world_size} processes)")
            raise FileNotFoundError(f"--resume: no checkpoint in {out} ({path} is missing)")
        try:
            index = json.loads(path.read_text())
        except ValueError as error:
            raise run_files.DamagedCheckpoint(run_files.damaged_message(path, error)) from None
        if index.get("world_size") != self.world_size:
            raise ValueError(
                f"{path} was written by {index.get('world_size')} processes, but this run has "
                f"{self.world_size} (WORLD_SIZE): resume it with torchrun --nproc-per-node "
                f"{index.get('world_size')}; rows and optimizer state are partitioned per "
                f"process")
        run_files.check_fingerprint(path, index["fingerprint"], fingerprint)
        if index["bounds"] != self.graph.bounds:
            raise ValueError(f"{path} partitions the nodes as {index['bounds']}, this run as "
                             f"{self.graph.bounds}: the data changed")
        shard_path = out / index["shards"][self.rank]
        shard = run_files.load_file(shard_path)
        with torch.no_grad():
            self.weight.copy_(shard["weight"])
        load_optimizer_state(self.optimizer, shard["optimizer"])
        run_files.set_rng_state(self.generator, shard["rng"])
        self._remove_shards(out, keep=shard_path.name)
        return index["state"]
