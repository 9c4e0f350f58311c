"""Model backends behind one Protocol; :func:`load_backend` builds one from a model string."""

from __future__ import annotations

from alignkit.models.base import (
    BackendOptions,
    Completion,
    GenerationConfig,
    Message,
    ModelBackend,
    ModelSpec,
    Prompt,
    TokenLogprobs,
    as_messages,
    score,
)


def load_backend(
    model: str | ModelSpec, options: BackendOptions | None = None, **overrides
) -> ModelBackend:
    """Build the backend a model string names.

    ``overrides`` are :class:`BackendOptions` fields, e.g.
    ``load_backend("testbed", batch_size=32)``.
    The testbed is built and cached on first use (a few minutes on a CPU).
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec.parse(model)
    opts = (options or BackendOptions()).model_copy(update=overrides)
    BackendOptions.model_validate(opts.model_dump())
    if spec.kind == "openai":
        from alignkit.models.openai_compat import OpenAIBackend

        return OpenAIBackend(spec, opts)
    from alignkit.models.hf import HFBackend

    if spec.kind == "testbed":
        from alignkit.testbed import ensure_testbed

        return HFBackend(ModelSpec(kind="hf", path=str(ensure_testbed())), opts, name="testbed")
    return HFBackend(spec, opts)


__all__ = [
    "BackendOptions",
    "Completion",
    "GenerationConfig",
    "Message",
    "ModelBackend",
    "ModelSpec",
    "Prompt",
    "TokenLogprobs",
    "as_messages",
    "load_backend",
    "score",
]
