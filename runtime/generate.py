"""``Generator``: streaming decode through a causal LM's stateful graph.

The prompt goes through the graph in chunks of at most ``prefill_chunk`` tokens (prefill); every
new token is one more call with ``seq = 1``. The state has a constant size, so decode cost does
not grow with the context, and neither does prefill memory. Between calls it stays on the GPU
under CUDA (IO binding), and in host arrays on the CPU, where a plain run costs less per call.

An export with fixed-shape graphs (``--static``) is driven through them instead where asked
(:class:`~favor.runtime.static.StaticLM`: whole prefill chunks, then decode steps), with the
same logits, so the same greedy ids.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnxruntime as ort

from .checks import is_int
from .contract import ModelKind
from .dtypes import numpy_dtype
from .manifest import export_files
from .sampling import check_sampling, sample_token
from .session import Session, check_token_ids
from .static import StaticLM

DEFAULT_PREFILL_CHUNK = 4096


class Generator:
    """Token-by-token generation from one exported causal LM, one sequence at a time.

    ``prefill_chunk`` is the most prompt tokens fed to the graph in one call. The state has a
    constant size, so a long prompt fed in chunks needs the memory of one chunk (activations and
    ``prefill_chunk x vocabulary`` logits), whatever its length, and gives the same logits as
    one call.

    A Generator holds one sequence's state, so it serves one call at a time: a call made while
    another is under way (from another thread, or while a :meth:`stream` is still open) raises
    RuntimeError instead of mixing two sequences into one state. Give each thread its own
    Generator; several Generators may share one :class:`Session`, each keeping its own state.

    ``static``: run the export's fixed-shape decode and prefill graphs (``--static``) on the
    session's providers instead of the graph the session loaded: the same calls and the same
    logits, as an app on an NPU runs them. An export without them raises ManifestError. Off by
    default: on a CPU the dynamic graph serves a prompt in one call, the pair in several.

    ``io_binding``: keep the state in ONNX Runtime's buffers between calls (on the GPU under
    CUDA) instead of host arrays; None does so on CUDA only, where the state would otherwise
    cross to the host and back every token.
    """

    def __init__(
        self,
        session: Session,
        *,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        static: bool = False,
        io_binding: bool | None = None,
    ) -> None:
        if session.kind is not ModelKind.CAUSAL_LM:
            raise ValueError(
                f"Generator needs a causal LM export, got a {session.kind.value!r} model"
            )
        if not is_int(prefill_chunk, 1):
            raise ValueError(f"prefill_chunk must be a positive integer, got {prefill_chunk!r}")
        self.session = session
        self.prefill_chunk = prefill_chunk
        # Bound by role and name: the manifest's lists need not follow the graph's order.
        self.tokens_input = session.manifest.tokens
        logits = session.manifest.logits
        self.logits_output = logits.name
        self.vocabulary = session.vocabularies.get(
            self.tokens_input.name, (0, int(logits.shape[-1]))
        )
        self.vocab_size = self.vocabulary[1]
        self._device = "cuda" if session.device == "cuda" else "cpu"
        self._busy = threading.Lock()
        # How one call runs, feeds -> outputs by name. On the CPU a plain run is faster than IO
        # binding (0.64 against 0.81 ms per decode step of the sample LM, `python -m
        # benchmarks.runtimes`): there the state is in host memory either way.
        if static:
            files = export_files(session.manifest_path, session.manifest)
            self._drive = StaticLM.from_manifest(
                session.manifest, files, providers=session.providers, options=session.options
            ).run
        elif io_binding or (io_binding is None and self._device == "cuda"):
            self._drive = self._bound
        else:
            self._drive = self._plain
        self._reset()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # Non-blocking: a second caller waiting its turn would still find the state moved on by
        # the first, so it is refused outright.
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                "this Generator is already in use (by another thread, or by a stream that is "
                "still open): it holds one sequence's state; give each thread its own Generator "
                "(they can share one Session)"
            )
        try:
            yield
        finally:
            self._busy.release()

    def reset(self) -> None:
        """Forget the sequence (and any failure): the next call starts from an empty state."""
        with self._exclusive():
            self._reset()

    def _reset(self) -> None:
        self._state: dict[str, np.ndarray | ort.OrtValue] | None = None
        self._failure: BaseException | None = None
        self.position = 0

    def _empty_state(self) -> dict[str, np.ndarray | ort.OrtValue]:
        state = self.session.initial_state(1)
        if self._drive != self._bound:
            return state
        return {
            name: ort.OrtValue.ortvalue_from_numpy(array, self._device, 0)
            for name, array in state.items()
        }

    def _check_tokens(self, tokens: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
        """``tokens`` as the graph's ``(1, L)`` input, after checking they are token ids."""
        array = np.asarray(tokens)
        if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
            raise ValueError(f"{what} must be a non-empty 1-D sequence of integer token ids")
        check_token_ids(array, what, self.vocabulary)
        return array.astype(numpy_dtype(self.tokens_input.dtype))[None, :]

    def _call(self, tokens: np.ndarray) -> np.ndarray:
        """Run ``tokens (1, L)`` from the current state; return logits ``(L, V)``."""
        if self._failure is not None:
            raise RuntimeError(
                f"this Generator failed earlier ({self._failure}); call reset() before using it again"
            )
        limit = self.session.manifest.max_sequence_length
        if limit is not None and self.position + tokens.shape[1] > limit:
            raise ValueError(
                f"the sequence would reach {self.position + tokens.shape[1]} tokens, and this "
                f"model takes at most {limit} (max_sequence_length); stream with window={limit} "
                "to keep generating"
            )
        try:
            state = self._state if self._state is not None else self._empty_state()
            outputs = self._drive({self.tokens_input.name: tokens, **state})
            logits = outputs[self.logits_output]
            logits = logits.numpy() if isinstance(logits, ort.OrtValue) else logits
            self._state = {inp: outputs[output] for inp, output in self.session.state}
        except Exception as error:
            # The state may be half-updated: refuse to continue rather than produce garbage.
            self._failure = error
            raise RuntimeError(f"decode step failed: {error}") from error
        self.position += tokens.shape[1]
        return logits[0]

    def _plain(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call with every tensor in host memory."""
        return self.session.run_arrays(feeds)

    def _bound(self, feeds: dict[str, np.ndarray | ort.OrtValue]) -> dict[str, ort.OrtValue]:
        """One call with the state bound where it lives (on the GPU under CUDA), so it never
        crosses to the host; the tokens go in and the logits come out through host memory."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        names = [self.logits_output, *(output for _, output in self.session.state)]
        for name in names:
            binding.bind_output(name, "cpu" if name == self.logits_output else self._device)
        self.session.run_with_iobinding(binding)
        # get_outputs() lists the outputs in the order they were bound.
        return dict(zip(names, binding.get_outputs(), strict=True))

    def _prefill(self, tokens: np.ndarray) -> np.ndarray:
        """Feed ``tokens (1, L)`` in chunks of ``prefill_chunk``; return the last logits ``(V,)``."""
        for start in range(0, tokens.shape[1], self.prefill_chunk):
            logits = self._call(tokens[:, start : start + self.prefill_chunk])
        return logits[-1]

    def prefill(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Feed ``tokens`` after whatever came before; return the last position's logits ``(V,)``."""
        with self._exclusive():
            return self._prefill(self._check_tokens(tokens, "tokens"))

    def step(self, token: int) -> np.ndarray:
        """Feed one token; return the logits ``(V,)`` for the next one."""
        with self._exclusive():
            return self._step(token)

    def _step(self, token: int) -> np.ndarray:
        return self._call(self._check_tokens([token], "token"))[-1]

    def stream(
        self,
        prompt_ids: Sequence[int] | np.ndarray,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: int | Iterable[int] | None = None,
        window: int | None = None,
    ) -> Iterator[int]:
        """Yield new token ids as they are chosen, starting a fresh sequence from ``prompt_ids``.

        The Generator is busy until the stream ends or is closed.

        Args:
            prompt_ids: the prompt, a non-empty 1-D sequence of token ids ``(L,)`` within the
                export's vocabulary; fed in chunks of ``prefill_chunk``.
            max_new_tokens: the most tokens to yield (>= 0).
            temperature: 0 is greedy, and so is a temperature too small for the scaled logits
                to fit in float64 (e.g. 1e-310), greedy being its limit; above 0 the logits
                ``(V,)`` are divided by it before sampling.
            top_k: sample among the ``top_k`` most likely tokens only.
            top_p: sample among the smallest set of tokens whose probability reaches ``top_p``.
            seed: seeds the sampler, so a stream is reproducible; None draws fresh entropy.
            stop: a token id, or several, that ends generation; it is not yielded.
            window: for models trained on fixed-length windows, which degrade on longer
                histories: once the state has taken in ``window`` tokens, it is rebuilt from
                the last ``window // 2`` tokens (one prefill), so the model never sees more
                history than it was trained on. None keeps the whole history in the state.

        Yields:
            Each new token id (int), as soon as it is chosen.

        Raises:
            ValueError: bad arguments or token ids, before anything runs. RuntimeError: the
            Generator is in use, or a step failed (then :meth:`reset` before reuse).
        """
        check_sampling(temperature, top_k, top_p)
        if not is_int(max_new_tokens, 0):
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if window is not None and not is_int(window, 2):
            raise ValueError(f"window must be an integer >= 2 or None, got {window!r}")
        stops = {stop} if isinstance(stop, int) else set(stop or ())
        prompt = self._check_tokens(prompt_ids, "prompt_ids")
        history = [int(t) for t in prompt[0]]
        if window is not None:
            prompt = prompt[:, -window:]
        rng = np.random.default_rng(seed)
        with self._exclusive():
            self._reset()
            logits = self._prefill(prompt)
            for produced in range(max_new_tokens):
                token = sample_token(
                    logits, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng
                )
                if token in stops:
                    return
                yield token
                history.append(token)
                if produced + 1 == max_new_tokens:
                    return
                if window is not None and self.position >= window:
                    self._reset()
                    logits = self._prefill(self._check_tokens(history[-(window // 2) :], "history"))
                else:
                    logits = self._step(token)

    def generate(
        self, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int, **kwargs
    ) -> list[int]:
        """The new token ids, as a list: :meth:`stream` collected. Same arguments."""
        return list(self.stream(prompt_ids, max_new_tokens, **kwargs))
