"""``Generator``: streaming decode through a causal LM's stateful graph.

The prompt goes through the graph in one call (prefill); every new token is one more call with
``seq = 1``. Between calls the constant-size state stays in ONNX Runtime's own buffers (on the GPU
with the CUDA provider) through IO binding, so decode cost does not grow with the context.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnxruntime as ort

from .sampling import check_sampling, sample_token
from .session import NUMPY_DTYPES, Session


class Generator:
    """Token-by-token generation from one exported causal LM, one sequence at a time.

    Several Generators may share one :class:`Session`: each keeps its own state.
    """

    def __init__(self, session: Session) -> None:
        if session.kind != "causal-lm":
            raise ValueError(f"Generator needs a causal LM export, got a {session.kind!r} model")
        self.session = session
        self.tokens_input = session.inputs[0]
        self.logits_output = session.outputs[0].name
        token_range = next(
            (
                e.get("range")
                for e in session.manifest["inputs"]
                if e["name"] == self.tokens_input.name
            ),
            None,
        )
        self.vocab_size = int(token_range[1]) if token_range else int(session.outputs[0].shape[-1])
        self._device = "cuda" if session.device == "cuda" else "cpu"
        self.reset()

    def reset(self) -> None:
        """Forget the sequence (and any failure): the next call starts from an empty state."""
        self._state: dict[str, ort.OrtValue] | None = None
        self._failure: BaseException | None = None
        self.position = 0

    def _empty_state(self) -> dict[str, ort.OrtValue]:
        return {
            name: ort.OrtValue.ortvalue_from_numpy(array, self._device, 0)
            for name, array in self.session.initial_state(1).items()
        }

    def _check_tokens(self, tokens: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(tokens)
        if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
            raise ValueError(f"{what} must be a non-empty 1-D sequence of integer token ids")
        bad = array[(array < 0) | (array >= self.vocab_size)]
        if bad.size:
            raise ValueError(
                f"{what} holds token id {int(bad[0])}, outside the vocabulary [0, {self.vocab_size})"
            )
        return array.astype(NUMPY_DTYPES[self.tokens_input.dtype])[None, :]

    def _call(self, tokens: np.ndarray) -> np.ndarray:
        """Run ``tokens (1, L)`` from the current state; return logits ``(L, V)``."""
        if self._failure is not None:
            raise RuntimeError(
                f"this Generator failed earlier ({self._failure}); call reset() before using it again"
            )
        try:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.tokens_input.name, tokens)
            state = self._state if self._state is not None else self._empty_state()
            for name, value in state.items():
                binding.bind_ortvalue_input(name, value)
            binding.bind_output(self.logits_output, "cpu")
            for _, output in self.session.state:
                binding.bind_output(output, self._device)
            self.session.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            logits = outputs[0].numpy()[0]
            self._state = {inp: outputs[i + 1] for i, (inp, _) in enumerate(self.session.state)}
        except Exception as error:
            # The state may be half-updated: refuse to continue rather than produce garbage.
            self._failure = error
            raise RuntimeError(f"decode step failed: {error}") from error
        self.position += tokens.shape[1]
        return logits

    def prefill(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Feed ``tokens`` after whatever came before; return the last position's logits ``(V,)``."""
        return self._call(self._check_tokens(tokens, "tokens"))[-1]

    def step(self, token: int) -> np.ndarray:
        """Feed one token; return the logits ``(V,)`` for the next one."""
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
        """Yield new token ids as they are chosen. Starts a fresh sequence from ``prompt_ids``.

        ``temperature=0`` is greedy; ``seed`` makes sampling reproducible. Generation ends after
        ``max_new_tokens`` or at a token in ``stop`` (which is not yielded).

        ``window`` is for models trained on fixed-length windows, which degrade on longer
        histories: once the state has taken in ``window`` tokens, it is rebuilt from the last
        ``window // 2`` tokens (one prefill), so the model never sees more history than it was
        trained on. ``None`` keeps the whole history in the state.
        """
        check_sampling(temperature, top_k, top_p)
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 0
        ):
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < 2
        ):
            raise ValueError(f"window must be an integer >= 2 or None, got {window!r}")
        stops = {stop} if isinstance(stop, int) else set(stop or ())
        prompt = self._check_tokens(prompt_ids, "prompt_ids")
        history = [int(t) for t in prompt[0]]
        if window is not None:
            prompt = prompt[:, -window:]
        rng = np.random.default_rng(seed)
        self.reset()
        logits = self._call(prompt)[-1]
        for produced in range(max_new_tokens):
            token = sample_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
            if token in stops:
                return
            yield token
            history.append(token)
            if produced + 1 == max_new_tokens:
                return
            if window is not None and self.position >= window:
                self.reset()
                logits = self.prefill(history[-(window // 2) :])
            else:
                logits = self.step(token)

    def generate(
        self, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int, **kwargs
    ) -> list[int]:
        """The new token ids, as a list: :meth:`stream` collected. Same arguments."""
        return list(self.stream(prompt_ids, max_new_tokens, **kwargs))
