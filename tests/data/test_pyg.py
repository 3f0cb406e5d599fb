"""lightgcn_ext.data.from_pyg: torch_geometric's recommendation data sets."""
import pytest
import torch

from helpers import write_splits
from lightgcn_ext.data import from_pyg, load


# ------------------------------------------------------------ torch_geometric
def amazon_book_like():
    """A HeteroData with AmazonBook's layout: edge_index the train split,
    edge_label_index the test split, a reverse edge type."""
    from torch_geometric.data import HeteroData

    data = HeteroData()
    data["user"].num_nodes, data["book"].num_nodes = 4, 6
    train = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 1, 3, 4]])
    data["user", "rates", "book"].edge_index = train
    data["book", "rated_by", "user"].edge_index = train.flip([0])
    data["user", "rates", "book"].edge_label_index = torch.tensor([[0, 1, 3], [2, 5, 0]])
    return data


def movielens_like(num_users=30, num_movies=40, seed=0):
    """A HeteroData with MovieLens1M's layout: features, and every rating in
    edge_index with its rating and time."""
    from torch_geometric.data import HeteroData

    gen = torch.Generator().manual_seed(seed)
    keys = torch.randperm(num_users * num_movies, generator=gen)[:300].sort().values
    edge_index = torch.stack([keys // num_movies, keys % num_movies])
    data = HeteroData()
    data["movie"].x = torch.rand(num_movies, 18, generator=gen)
    data["user"].x = torch.rand(num_users, 30, generator=gen)
    store = data["user", "rates", "movie"]
    store.edge_index = edge_index
    store.rating = torch.randint(1, 6, (300,), generator=gen)
    store.time = torch.randperm(300, generator=gen) + 10**9
    data["movie", "rated_by", "user"].edge_index = edge_index.flip([0])
    return data


def test_from_pyg_amazon_book_layout():
    pytest.importorskip("torch_geometric")
    data = amazon_book_like()
    converted = from_pyg(data)
    assert (converted.name, converted.num_users, converted.num_items) == ("pyg", 4, 6)
    assert converted.train.tolist() == data["user", "rates", "book"].edge_index.tolist()
    assert converted.test.tolist() == [[0, 1, 3], [2, 5, 0]]

    class AmazonBook:  # a data set: indexing gives its HeteroData, the name is the class's
        def __getitem__(self, index):
            return data

    assert from_pyg(AmazonBook()).name == "AmazonBook"


def test_from_pyg_movielens_layout():
    pytest.importorskip("torch_geometric")
    data = movielens_like()
    store = data["user", "rates", "movie"]
    all_pairs = set(map(tuple, store.edge_index.t().tolist()))
    for split in ("random", "time"):
        converted = from_pyg(data, name="ml", split=split, seed=1)
        assert (converted.name, converted.num_users, converted.num_items) == ("ml", 30, 40)
        train = set(map(tuple, converted.train.t().tolist()))
        test = set(map(tuple, converted.test.t().tolist()))
        assert train | test == all_pairs and not train & test
        degree = torch.bincount(store.edge_index[0], minlength=30)
        test_degree = torch.bincount(converted.test[0], minlength=30)
        assert (test_degree[degree >= 2] >= 1).all() and (test_degree < degree.clamp(min=1)).all()
        assert 0.15 < len(test) / len(all_pairs) < 0.3
    # split="time": each user's test items are its latest.
    time = {pair: int(t) for pair, t in zip(map(tuple, store.edge_index.t().tolist()), store.time)}
    converted = from_pyg(data, split="time")
    for user in range(30):
        train_times = [time[p] for p in map(tuple, converted.train.t().tolist()) if p[0] == user]
        test_times = [time[p] for p in map(tuple, converted.test.t().tolist()) if p[0] == user]
        if test_times:
            assert min(test_times) > max(train_times)
    assert torch.equal(from_pyg(data, seed=1).test, from_pyg(data, seed=1).test)
    high = from_pyg(data, min_rating=4)
    assert high.train.shape[1] + high.test.shape[1] == int((store.rating >= 4).sum())


def test_from_pyg_bad_input():
    pytest.importorskip("torch_geometric")
    data = amazon_book_like()
    data["user", "buys", "book"].edge_index = torch.tensor([[0], [0]])
    with pytest.raises(ValueError, match="exactly one edge type"):
        from_pyg(data)
    data = amazon_book_like()
    data["book"].num_nodes = 5  # item 5 in the test split is then out of range
    with pytest.raises(ValueError, match="test has item id 5, but num_items is 5"):
        from_pyg(data)
    with pytest.raises(ValueError, match="no time"):
        from_pyg(_without_time(movielens_like()), split="time")
    with pytest.raises(TypeError, match="HeteroData"):
        from_pyg([torch.zeros(2)])


def _without_time(data):
    del data["user", "rates", "movie"].time
    return data


def test_from_pyg_real_classes_process_local_files(tmp_path):
    """torch_geometric's AmazonBook processes raw files put in its raw/ directory
    (nothing is downloaded), and converts to the same Interactions as load()."""
    pytest.importorskip("pandas")  # AmazonBook.process reads with pandas
    tg_datasets = pytest.importorskip("torch_geometric.datasets")
    raw = tmp_path / "amazon" / "raw"
    write_splits(raw, train="0 0 1\n1 1 2\n2 3\n", test="0 2\n1 0\n2 1\n")
    (raw / "user_list.txt").write_text("org_id remap_id\na 0\nb 1\nc 2\n")
    (raw / "item_list.txt").write_text("org_id remap_id\nw 0\nx 1\ny 2\nz 3\n")
    converted = from_pyg(tg_datasets.AmazonBook(str(tmp_path / "amazon")))
    loaded = load(raw)
    assert converted.name == "AmazonBook"
    assert (converted.num_users, converted.num_items) == (loaded.num_users, loaded.num_items)
    assert torch.equal(converted.train, loaded.train) and torch.equal(converted.test, loaded.test)


def test_from_pyg_real_movielens_class_processes_local_files(tmp_path):
    """torch_geometric's MovieLens1M on raw files in its raw/ directory (nothing is
    downloaded): every rating an interaction, each user's latest ones test."""
    pytest.importorskip("pandas")
    tg_datasets = pytest.importorskip("torch_geometric.datasets")
    raw = tmp_path / "ml" / "raw"
    raw.mkdir(parents=True)
    (raw / "movies.dat").write_text("10::A (2000)::Comedy\n20::B (2001)::Drama|Comedy\n"
                                    "30::C (2002)::Drama\n")
    (raw / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (raw / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n"
                                     "1::30::4::978301968\n2::20::5::978300275\n"
                                     "2::30::1::978300100\n")
    data = from_pyg(tg_datasets.MovieLens1M(str(tmp_path / "ml")), split="time")
    assert (data.name, data.num_users, data.num_items) == ("MovieLens1M", 2, 3)
    # Users and movies are numbered in file order: user 1 -> 0, movie 20 -> 1.
    assert data.train.tolist() == [[0, 0, 1], [0, 2, 2]] and data.test.tolist() == [[0, 1], [1, 1]]
