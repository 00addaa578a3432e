from __future__ import annotations

from guarded_ws.deadlines import DeadlineQueue, ExpiryQueue, Timed, next_sweep


class Item(Timed):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def names(items) -> list[str]:
    return [item.name for item in items]


def test_expires_in_insertion_order_and_stops_at_the_first_in_time():
    queue = DeadlineQueue[Item]("auth", 5.0)
    a, b, c = Item("a"), Item("b"), Item("c")
    queue.push(a, now=0.0)
    queue.push(b, now=1.0)
    queue.push(c, now=2.0)
    assert names(queue.pop_expired(4.9)) == []
    assert names(queue.pop_expired(6.0)) == ["a", "b"]
    assert len(queue) == 1
    assert queue.oldest() is c
    assert names(queue.pop_expired(100.0)) == ["c"]
    assert len(queue) == 0 and queue.oldest() is None


def test_traffic_does_not_extend_a_deadline():
    queue = DeadlineQueue[Item]("handshake", 1.0)
    item = Item("slow")
    queue.push(item, now=0.0)
    # nothing the peer does touches the queue; only the clock matters
    assert names(queue.pop_expired(1.0)) == ["slow"]


def test_discarded_items_never_expire():
    queue = DeadlineQueue[Item]("auth", 1.0)
    a, b = Item("a"), Item("b")
    queue.push(a, 0.0)
    queue.push(b, 0.0)
    queue.discard(a)
    assert len(queue) == 1
    assert names(queue.pop_expired(5.0)) == ["b"]
    assert a.queue is None


def test_moving_between_queues_leaves_the_first():
    handshake = DeadlineQueue[Item]("handshake", 1.0)
    auth = DeadlineQueue[Item]("auth", 10.0)
    item = Item("x")
    handshake.push(item, 0.0)
    auth.push(item, 0.5)
    assert len(handshake) == 0 and len(auth) == 1
    assert names(handshake.pop_expired(5.0)) == []
    assert item.deadline == 10.5
    assert names(auth.pop_expired(10.5)) == ["x"]


def test_an_item_can_come_back_with_a_new_deadline():
    keepalive = DeadlineQueue[Item]("keepalive", 10.0)
    pong = DeadlineQueue[Item]("pong", 5.0)
    x, y = Item("x"), Item("y")
    keepalive.push(x, 0.0)
    keepalive.push(y, 1.0)
    pong.push(x, 2.0)
    keepalive.push(x, 3.0)  # back, behind y
    assert names(keepalive.pop_expired(11.0)) == ["y"]
    assert names(keepalive.pop_expired(12.9)) == []
    assert names(keepalive.pop_expired(13.0)) == ["x"]


def test_stale_entries_are_compacted():
    queue = DeadlineQueue[Item]("auth", 1000.0)
    keep = Item("keep")
    queue.push(keep, 0.0)
    for i in range(10_000):
        item = Item(str(i))
        queue.push(item, 0.0)
        queue.discard(item)
    assert len(queue) == 1
    assert len(queue._items) <= 2 * len(queue) + DeadlineQueue._SLACK + 1
    assert queue.oldest() is keep


def test_the_sweep_comes_when_the_soonest_deadline_falls_due():
    auth, closing = DeadlineQueue[Item]("auth", 5.0), DeadlineQueue[Item]("closing", 1.0)
    bounds = {"longest": 0.5, "shortest": 0.125}
    assert next_sweep([auth, closing], 10.0, **bounds) == 10.5  # nothing due: at the latest
    auth.push(Item("a"), now=5.375)
    assert next_sweep([auth, closing], 10.0, **bounds) == 10.375
    closing.push(Item("b"), now=9.25)
    assert next_sweep([auth, closing], 10.0, **bounds) == 10.25
    assert next_sweep([auth, closing], 10.5, **bounds) == 10.625  # overdue: not before `shortest`


def test_a_discarded_head_does_not_bring_the_sweep_forward():
    queue = DeadlineQueue[Item]("auth", 5.0)
    gone, kept = Item("gone"), Item("kept")
    queue.push(gone, now=5.0)
    queue.push(kept, now=5.25)
    queue.discard(gone)
    assert queue.next_deadline() == 10.25
    assert next_sweep([queue], 10.0, longest=0.5, shortest=0.125) == 10.25


class Key:
    def __init__(self, name: str) -> None:
        self.name = name


def test_expiry_queue_pops_in_deadline_order_not_insertion_order():
    queue = ExpiryQueue[Key]()
    late, early, middle = Key("late"), Key("early"), Key("middle")
    queue.push(late, 30.0)
    queue.push(early, 10.0)
    queue.push(middle, 20.0)
    assert names(queue.pop_expired(9.9)) == []
    assert names(queue.pop_expired(20.0)) == ["early", "middle"]
    assert len(queue) == 1 and late in queue
    assert names(queue.pop_expired(1e9)) == ["late"]
    assert len(queue) == 0


def test_expiry_queue_discard_and_move():
    queue = ExpiryQueue[Key]()
    gone, moved, kept = Key("gone"), Key("moved"), Key("kept")
    for key in (gone, moved, kept):
        queue.push(key, 5.0)
    queue.discard(gone)
    queue.discard(gone)  # twice is harmless
    queue.push(moved, 50.0)  # re-authenticated: a later deadline replaces the earlier one
    assert names(queue.pop_expired(10.0)) == ["kept"]
    assert gone not in queue and moved in queue
    queue.push(moved, 1.0)  # moved earlier works too
    assert names(queue.pop_expired(10.0)) == ["moved"]
    assert names(queue.pop_expired(1e9)) == []


def test_expiry_queue_ties_need_no_ordering_of_items():
    queue = ExpiryQueue[Key]()  # Key defines no <: a tie must never compare items
    first, second = Key("a"), Key("b")
    queue.push(first, 1.0)
    queue.push(second, 1.0)
    assert sorted(names(queue.pop_expired(1.0))) == ["a", "b"]


def test_expiry_queue_stale_entries_stay_bounded():
    queue = ExpiryQueue[Key]()
    key = Key("renewed")
    for when in range(10_000):
        queue.push(key, float(when))
    assert len(queue) == 1
    assert len(queue._heap) <= 2 * 1 + ExpiryQueue._SLACK + 1
    assert names(queue.pop_expired(9_998.0)) == []
    assert names(queue.pop_expired(9_999.0)) == ["renewed"]
