package loupe.engine.hooks;

import loupe.engine.Scope;

/**
 * What a hook callback knows about where it runs.
 *
 * @param name  the full hook name ({@code blocks.3.attn.hook_z})
 * @param point the hook point kind
 * @param layer the block index, or -1 for model-level points
 * @param scope the forward pass's scope: tensors allocated here live until the forward's results are closed
 * @param positionOffset the absolute position of the activation's first position (non-zero when generating with a KV cache)
 * @param kept  the activation is not written again by this pass (no later callback here may edit it and the
 *              forward gives hooked activations buffers of their own), so a reader owned by {@code scope} may
 *              keep the tensor itself instead of a copy
 */
public record HookContext(String name, HookPoint point, int layer, Scope scope, int positionOffset, boolean kept) {}
