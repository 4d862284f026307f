from ragserve.generation.streaming import StopTextStream


def feed_all(stream: StopTextStream, pieces: list[bytes]) -> str:
    return "".join(stream.feed(p) for p in pieces) + stream.flush()


def test_stop_string_split_across_tokens_is_not_emitted() -> None:
    s = StopTextStream(["\nQuestion:"])
    out = feed_all(s, [b"Paris", b" is", b"\nQue", b"stion:", b" more"])
    assert out == "Paris is" and s.stopped


def test_held_prefix_is_released_when_it_is_not_a_stop() -> None:
    s = StopTextStream(["\nQuestion:"])
    assert feed_all(s, [b"a\nQue", b"ue"]) == "a\nQueue"


def test_multibyte_character_split_across_tokens() -> None:
    data = "héllo → ok".encode()
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert feed_all(StopTextStream(), pieces) == "héllo → ok"
