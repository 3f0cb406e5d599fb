"""BPR training triples (user, positive item, negative item), drawn on the device.

An epoch has as many triples as there are training interactions, drawn in
one of two ways (`SAMPLING`):
- "interactions" (PyG's and RecBole's examples): every training
  interaction once, as (user, positive), in a random order;
- "users" (the LightGCN authors' code): each triple's user uniform over the
  users with training interactions, its positive uniform over that user's
  items; a user with few interactions is drawn as often as a heavy one.
Either way a triple's negative is uniform over the items its user has not
interacted with. Everything is tensor work on the sampler's device, with no
host synchronization: a CUDA training loop never waits for it.
"""
import math

import torch

from .. import validation


SAMPLING = ("interactions", "users")


class BPRSampler:
    """Batches of (users, positive items, negative items), item ids 0-based.

    Args:
        train: [2, n] int64 tensor of (user, item) training interactions.
        num_users, num_items: the id ranges.
        batch_size: triples per batch (the last batch of an epoch may be smaller).
        device: where the batches are drawn and returned.
        sampling: "interactions" or "users" (see the module's description).

    A negative is uniform over the items the user has not interacted with,
    the distribution that rejection sampling (draw, re-draw while positive)
    gives, but drawn exactly in one pass: pick r uniform in
    [0, num_items - deg(u)) and return the r-th item not among u's
    positives, found by a vectorized binary search over u's sorted positive
    items (item = r + the number of positives at or below it).
    """

    def __init__(self, train, num_users, num_items, batch_size, device="cpu",
                 sampling="interactions"):
        batch_size = validation.positive_int(batch_size, "batch_size")
        self.sampling = validation.choice(sampling, "sampling", SAMPLING)
        if train.dim() != 2 or train.shape[0] != 2 or train.shape[1] == 0:
            raise ValueError(f"train must be a non-empty [2, n] tensor of (user, item) pairs, "
                             f"got shape {list(train.shape)}")
        train = train.to(device=device, dtype=torch.long)
        users, items = train[0], train[1]
        self.num_users, self.num_items = num_users, num_items
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.users, self.items = users, items
        # Each user's distinct positive items, sorted: a CSR by user.
        keys = torch.unique(users * num_items + items)  # sorted
        self._positives = keys % num_items
        degree = torch.bincount(keys // num_items, minlength=num_users)
        self._rowptr = torch.zeros(num_users + 1, dtype=torch.long, device=self.device)
        self._rowptr[1:] = degree.cumsum(0)
        self._degree = degree
        self._num_negatives = num_items - degree  # per user
        self._active_users = torch.nonzero(degree).flatten()  # those with a positive to draw
        full = self._num_negatives[users] <= 0
        if bool(full.any()):  # once, at construction
            user = int(users[full][0])
            raise ValueError(f"user {user} has interacted with every item: no negative item "
                             f"can be drawn for it")
        self._search_steps = max(1, math.ceil(math.log2(int(degree.max()) + 1)))

    def __len__(self):
        """Batches per epoch."""
        return math.ceil(self.users.numel() / self.batch_size)

    def epoch(self, generator):
        """The batches of one epoch, drawn with `generator` (on the sampler's device)."""
        if self.sampling == "users":
            yield from self._epoch_by_users(generator)
            return
        order = torch.randperm(self.users.numel(), generator=generator, device=self.device)
        for start in range(0, order.numel(), self.batch_size):
            index = order[start:start + self.batch_size]
            users = self.users[index]
            yield users, self.items[index], self.negatives(users, generator)

    def _epoch_by_users(self, generator):
        total = self.users.numel()
        for start in range(0, total, self.batch_size):
            size = min(self.batch_size, total - start)
            pick = torch.randint(self._active_users.numel(), (size,), generator=generator,
                                 device=self.device)
            users = self._active_users[pick]
            yield users, self._uniform_positives(users, generator), self.negatives(users, generator)

    def _uniform_positives(self, users, generator):
        """One positive item per user, uniform over its distinct items."""
        uniform = torch.rand(users.shape, generator=generator, device=self.device,
                             dtype=torch.float64)
        degree = self._degree[users]
        offset = (uniform * degree).long().clamp_(max=degree - 1)
        return self._positives[self._rowptr[users] + offset]

    def negatives(self, users, generator):
        """One negative item per user, uniform over the items it has not seen."""
        uniform = torch.rand(users.shape, generator=generator, device=self.device,
                             dtype=torch.float64)
        count = self._num_negatives[users]
        r = (uniform * count).long().clamp_(max=count - 1)  # the r-th unseen item
        # Find j, the number of positives p_k with p_k - k <= r (p_k - k is
        # non-decreasing: the unseen items before p_k); the answer is r + j.
        start = self._rowptr[users]
        low = torch.zeros_like(users)
        high = self._rowptr[users + 1] - start  # deg(u)
        for _ in range(self._search_steps):
            mid = (low + high) // 2
            inside = mid < high
            slot = torch.where(inside, start + mid, torch.zeros_like(mid))
            at_or_below = inside & (self._positives[slot] - mid <= r)
            low = torch.where(at_or_below, mid + 1, low)
            high = torch.where(at_or_below, high, mid)
        return r + low
