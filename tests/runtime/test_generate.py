"""Generator: streaming decode with a carried state, against PyTorch."""

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from favor.runtime import Generator, Session
from favor.runtime import generate as generate_module
from tests.runtime.reference import greedy_by_recompute


def _torch_greedy(lm, prompt, steps):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, lm(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt) :].tolist()


def test_greedy_decode_matches_pytorch_token_for_token(lm_dir, tiny_lm):
    generator = Generator(Session(lm_dir))
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]  # longer than one chunk (8)
    assert generator.generate(prompt, 30) == _torch_greedy(tiny_lm, prompt, 30)


@pytest.fixture
def chosen_from(monkeypatch):
    """The logits each token the Generator yields is chosen from, in order.

    Compared rather than the tokens alone: this model's argmax barely depends on the history
    beyond the last token, its logits do (by about 0.1).
    """
    seen = []
    sample_token = generate_module.sample_token

    def recording(logits, **kwargs):
        seen.append(logits.copy())
        return sample_token(logits, **kwargs)

    monkeypatch.setattr(generate_module, "sample_token", recording)
    return seen


DECODES = {
    "stream": lambda g, prompt, n: list(g.stream(prompt, n)),
    "generate": lambda g, prompt, n: g.generate(prompt, n),
}


@pytest.mark.parametrize("decode", DECODES.values(), ids=DECODES.keys())
def test_greedy_decode_matches_recomputing_the_whole_sequence_each_step(
    lm_dir, decode, chosen_from
):
    session = Session(lm_dir)
    prompt = [1, 2, 3]
    produced = decode(Generator(session), prompt, 12)
    expected, expected_logits = greedy_by_recompute(session, prompt, 12)
    assert produced == expected
    np.testing.assert_allclose(chosen_from, expected_logits, rtol=1e-4, atol=1e-4)


def test_a_manifest_listing_tensors_in_another_order_decodes_alike(
    permuted_lm_dir, tiny_lm, chosen_from
):
    session = Session(permuted_lm_dir)
    assert session.inputs[0].name != "tokens" and session.outputs[0].name != "logits"
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    produced = Generator(session).generate(prompt, 12)
    # PyTorch over the whole sequence: the logits at each position, with no state to mix up.
    with torch.no_grad():
        logits = tiny_lm(torch.tensor([prompt + produced]))[0, len(prompt) - 1 : -1].numpy()
    np.testing.assert_allclose(chosen_from, logits, rtol=1e-4, atol=1e-4)
    assert produced == logits.argmax(-1).tolist()


def test_seed_makes_sampling_reproducible_and_top_k_1_is_greedy(lm_dir):
    generator = Generator(Session(lm_dir))
    a = generator.generate([7, 7], 20, temperature=1.5, seed=0)
    assert a == generator.generate([7, 7], 20, temperature=1.5, seed=0)
    assert a != generator.generate([7, 7], 20, temperature=1.5, seed=1)
    assert generator.generate([7, 7], 20, temperature=1.5, top_k=1) == generator.generate(
        [7, 7], 20
    )


def test_stop_token_ends_generation(lm_dir):
    generator = Generator(Session(lm_dir))
    greedy = generator.generate([2, 4], 15)
    stop = greedy[5]
    assert generator.generate([2, 4], 15, stop=stop) == greedy[: greedy.index(stop)]


def test_state_size_is_independent_of_context_length(lm_dir):
    generator = Generator(Session(lm_dir))
    shapes = []
    for context in (4, 300):
        generator.reset()
        generator.prefill(np.arange(context) % 30)
        generator.step(1)
        shapes.append({name: tuple(np.shape(value)) for name, value in generator._state.items()})
    assert shapes[0] == shapes[1]
    assert generator.position == 301


def test_independent_streams_share_one_session(lm_dir, tiny_lm):
    session = Session(lm_dir)
    first, second = Generator(session), Generator(session)
    a, b = [5, 6, 7], [9, 9, 1, 2]
    logits_a, logits_b = first.prefill(a), second.prefill(b)
    for _ in range(6):  # interleaved steps
        token_a, token_b = int(np.argmax(logits_a)), int(np.argmax(logits_b))
        a.append(token_a)
        b.append(token_b)
        logits_a, logits_b = first.step(token_a), second.step(token_b)
    assert a[3:] == _torch_greedy(tiny_lm, [5, 6, 7], 6)
    assert b[4:] == _torch_greedy(tiny_lm, [9, 9, 1, 2], 6)


BAD_CALLS = {
    "token-too-large": (
        lambda g: g.generate([1, 30], 3),
        r"token id 30, outside the vocabulary \[0, 30\)",
    ),
    "negative-token": (lambda g: g.step(-1), "token id -1"),
    "empty-prompt": (lambda g: g.generate([], 3), "non-empty 1-D sequence"),
    "float-prompt": (lambda g: g.generate([1.5], 3), "integer token ids"),
    "temperature": (lambda g: g.generate([1], 3, temperature=-1), "temperature must be >= 0"),
    "top-k": (lambda g: g.generate([1], 3, top_k=0), "top_k must be a positive integer"),
    "top-p": (lambda g: g.generate([1], 3, top_p=1.5), r"top_p must be in \(0, 1\]"),
    "max-new-tokens": (lambda g: g.generate([1], -2), "max_new_tokens must be an integer >= 0"),
}


@pytest.mark.parametrize(("call", "message"), BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_are_value_errors(lm_dir, call, message):
    with pytest.raises(ValueError, match=message):
        call(Generator(Session(lm_dir)))


def test_a_failed_generator_refuses_until_reset(lm_dir, monkeypatch):
    session = Session(lm_dir)
    generator = Generator(session)
    generator.prefill([1, 2, 3])

    def broken(_feeds):
        raise RuntimeError("device lost")

    monkeypatch.setattr(session, "run_arrays", broken)
    with pytest.raises(RuntimeError, match="decode step failed: device lost"):
        generator.step(4)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match=r"failed earlier .* call reset\(\)"):
        generator.step(4)
    generator.reset()
    assert generator.generate([1, 2, 3], 4) == Generator(session).generate([1, 2, 3], 4)


def test_generator_needs_a_causal_lm(encoder_dir):
    with pytest.raises(ValueError, match="needs a causal LM export"):
        Generator(Session(encoder_dir))


# With a 6-token prompt and window 8, where the history each of 12 new tokens is chosen from
# starts. The state takes in tokens 0-7 (prompt, then one per step); once it holds 8 it is
# rebuilt from the last 4 (history[5:9]) and grows to 8 again, then is rebuilt from
# history[10:14].
WINDOW_STARTS = [0, 0, 0, 5, 5, 5, 5, 5, 10, 10, 10, 10]


def test_window_rebuilds_the_state_from_recent_tokens(lm_dir, tiny_lm, chosen_from):
    generator = Generator(Session(lm_dir))
    prompt = [1, 2, 3, 4, 5, 6]
    produced = generator.generate(prompt, len(WINDOW_STARTS), window=8)
    history = prompt + produced
    for index, start in enumerate(WINDOW_STARTS):
        context = history[start : len(prompt) + index]
        with torch.no_grad():
            expected = tiny_lm(torch.tensor([context]))[0, -1].numpy()
        np.testing.assert_allclose(
            chosen_from[index], expected, rtol=1e-4, atol=1e-4,
            err_msg=f"token {index} should be chosen from history[{start}:]",
        )  # fmt: skip
    # The last token was chosen from history[10:17]; without the window, from all 17.
    assert generator.position == 7


def test_window_must_be_at_least_two(lm_dir):
    with pytest.raises(ValueError, match="window must be an integer >= 2"):
        Generator(Session(lm_dir)).generate([1], 3, window=1)


@pytest.mark.parametrize(
    "kwargs", [{}, {"top_k": 5}, {"top_p": 0.9}], ids=["plain", "top_k", "top_p"]
)
def test_a_vanishing_temperature_is_greedy(lm_dir, kwargs):
    generator = Generator(Session(lm_dir))
    greedy = generator.generate([3, 1, 4], 10)
    assert generator.generate([3, 1, 4], 10, temperature=1e-310, seed=0, **kwargs) == greedy


def _blocking_session(lm_dir, monkeypatch):
    """A Session whose graph calls wait on ``release`` after signalling ``entered``."""
    session = Session(lm_dir)
    entered, release = threading.Event(), threading.Event()
    run = session.run_arrays

    def slow_run(feeds):
        entered.set()
        assert release.wait(10)
        return run(feeds)

    monkeypatch.setattr(session, "run_arrays", slow_run)
    return session, entered, release


CONCURRENT_CALLS = {
    "generate": lambda g: g.generate([1, 2], 3),
    "prefill": lambda g: g.prefill([1, 2]),
    "step": lambda g: g.step(1),
    "reset": lambda g: g.reset(),
    "stream": lambda g: next(g.stream([1, 2], 3)),
}


@pytest.mark.parametrize("second", CONCURRENT_CALLS.values(), ids=CONCURRENT_CALLS.keys())
def test_a_generator_used_from_two_threads_at_once_refuses_the_second(lm_dir, monkeypatch, second):
    session, entered, release = _blocking_session(lm_dir, monkeypatch)
    generator = Generator(session)
    first = []
    worker = threading.Thread(target=lambda: first.append(generator.generate([5, 6, 7], 4)))
    worker.start()
    try:
        assert entered.wait(10)
        with pytest.raises(RuntimeError, match="Generator is already in use"):
            second(generator)
    finally:
        release.set()
        worker.join()
    monkeypatch.undo()
    assert first == [Generator(session).generate([5, 6, 7], 4)]
    assert generator.generate([5, 6, 7], 4) == first[0]  # free again once the first call ended


def test_an_open_stream_holds_the_generator_until_it_ends(lm_dir):
    generator = Generator(Session(lm_dir))
    stream = generator.stream([1, 2, 3], 5)
    next(stream)
    with pytest.raises(RuntimeError, match="already in use"):
        generator.step(4)
    stream.close()
    generator.step(4)


PREFILL_CHUNK = 5


@pytest.mark.parametrize(
    "length",
    [1, PREFILL_CHUNK - 1, PREFILL_CHUNK, PREFILL_CHUNK + 1, 2 * PREFILL_CHUNK + 3],
    ids=["1", "C-1", "C", "C+1", "2C+3"],
)
def test_chunked_prefill_matches_one_shot_prefill(lm_dir, length):
    session = Session(lm_dir)
    chunked, whole = Generator(session, prefill_chunk=PREFILL_CHUNK), Generator(session)
    prompt = np.random.default_rng(length).integers(0, 30, length)
    np.testing.assert_allclose(chunked.prefill(prompt), whole.prefill(prompt), rtol=1e-5, atol=1e-5)
    assert chunked.position == whole.position == length
    assert chunked.generate(prompt, 8) == whole.generate(prompt, 8)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True], ids=["zero", "negative", "float", "bool"])
def test_prefill_chunk_must_be_a_positive_integer(lm_dir, chunk):
    with pytest.raises(ValueError, match="prefill_chunk must be a positive integer"):
        Generator(Session(lm_dir), prefill_chunk=chunk)


# The child's own peak resident memory. ru_maxrss would not do: it starts from the pytest
# process's resident size at fork time (torch included), which hides the child's own peak.
PEAK_RSS = r"""
import re, sys
import numpy as np
from favor.runtime import Generator, Session
generator = Generator(Session(sys.argv[1], providers="cpu", threads=1))
generator.prefill(np.arange(int(sys.argv[2])) % 30)
with open("/proc/self/status") as status:
    print(re.search(r"VmHWM:\s*(\d+) kB", status.read())[1])
"""


def _peak_rss_kib(export_dir, length):
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(export_dir), str(length)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_long_prompt_is_prefilled_in_bounded_memory(lm_dir):
    # Fed in one call, 100k tokens took 6x the peak memory of 4k tokens on this model.
    short, long = _peak_rss_kib(lm_dir, 4096), _peak_rss_kib(lm_dir, 100_000)
    assert long <= 1.5 * short, f"peak RSS {long} KiB at 100k tokens, {short} KiB at 4k"


def test_a_model_with_a_largest_position_refuses_to_go_past_it(lm_dir, tmp_path):
    limited = tmp_path / "limited"
    shutil.copytree(lm_dir, limited)
    path = limited / "lm.manifest.json"
    manifest = json.loads(path.read_text())
    manifest["max_sequence_length"] = 12
    path.write_text(json.dumps(manifest))
    generator = Generator(Session(limited))
    assert len(generator.generate([1, 2, 3], 9)) == 9  # 3 + 8 fed: 11 positions
    with pytest.raises(ValueError, match=r"reach 13 tokens, and this model takes at most 12"):
        generator.generate([1, 2, 3], 11)
    # With the window the state is rebuilt before the limit, and generation goes on.
    assert len(generator.generate([1, 2, 3], 30, window=12)) == 30


def test_io_binding_gives_the_host_arrays_ids(lm_dir):
    session = Session(lm_dir)
    bound = Generator(session, io_binding=True)
    assert bound._drive == bound._bound
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    assert bound.generate(prompt, 12) == Generator(session).generate(prompt, 12)
    sampled = {"temperature": 0.9, "top_k": 10, "seed": 4}
    assert bound.generate(prompt, 12, **sampled) == Generator(session).generate(
        prompt, 12, **sampled
    )
