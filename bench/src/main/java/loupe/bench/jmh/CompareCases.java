package loupe.bench.jmh;

import loupe.engine.Batch;
import loupe.engine.Scope;
import loupe.engine.generate.Generator;
import loupe.engine.generate.Sampling;
import loupe.engine.hooks.Hooks;
import loupe.engine.model.Jacobian;
import loupe.engine.model.ModelConfig;
import loupe.engine.model.Transformer;
import loupe.interp.patching.ActivationPatching;
import loupe.interp.patching.Metrics;

import java.util.HashMap;
import java.util.OptionalInt;
import java.util.SplittableRandom;

/**
 * The loupe side of each case of the PyTorch comparison ({@code bench/compare}), as one timed body per
 * case: {@code loupe bench case} times them for {@code run.sh}, {@link CompareBench} under JMH. The
 * torch side ({@code bench/compare/torch_ref.py}) does the same work with the same token ids.
 */
public final class CompareCases {
    private CompareCases() {}

    /** Token ids {@code [batch, tokens]} below {@code vocab}, the same for a seed (both sides use these seeds). */
    public static int[][] randomTokens(int batch, int tokens, int vocab, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        int[][] ids = new int[batch][tokens];
        for (int[] row : ids) for (int i = 0; i < tokens; i++) row[i] = r.nextInt(vocab);
        return ids;
    }

    /**
     * A forward of {@code batch x tokens} random ids; {@code cached}: caching every hook TransformerLens's
     * {@code run_with_cache} returns by default (all but {@code attn.hook_result}, which TL computes only
     * with {@code use_attn_result}): the set the torch side clones.
     */
    public static Runnable forward(Transformer t, int batch, int tokens, boolean cached) {
        Batch b = Batch.of(randomTokens(batch, tokens, t.config().vocab(), 1));
        return () -> {
            try (Scope s = new Scope(t.backend())) {
                t.forward(s, b, cached ? new Hooks().cache(x -> !x.endsWith("attn.hook_result"), s, new HashMap<>()) : Hooks.none());
            }
        };
    }

    /**
     * Activation patching of resid_pre over every layer x 16 positions of a 16-token prompt; the corrupted
     * prompt changes three ids; the metric is the logit difference normalized to clean 1, corrupted 0.
     */
    public static Runnable patching(Transformer t) {
        ModelConfig cfg = t.config();
        int[] clean = randomTokens(1, 16, cfg.vocab(), 3)[0], corrupt = clean.clone();
        for (int p : new int[]{2, 7, 11}) corrupt[p] = (corrupt[p] + 1) % cfg.vocab();
        return () -> {
            try (ActivationPatching p = new ActivationPatching(t, Batch.of(clean), Batch.of(corrupt))) {
                var metric = Metrics.logitDiff(1, 2);
                float c = p.cleanValue(metric), k = p.corruptedValue(metric);
                p.residPre(Metrics.normalized(metric, c, k));
            }
        };
    }

    /** The block that {@link #jacobian} differentiates from ({@code hook_resid_pre}, position 5). */
    public static int jacobianInLayer(ModelConfig cfg) {
        return Math.min(4, cfg.nLayers() - 1);
    }

    /** d blocks.{last}.hook_resid_post[pos 15] / d blocks.4.hook_resid_pre[pos 5] ({@code d_model x d_model}), 16-token prompt. */
    public static Runnable jacobian(Transformer t) {
        ModelConfig cfg = t.config();
        Batch b = Batch.of(randomTokens(1, 16, cfg.vocab(), 4));
        int in = jacobianInLayer(cfg), out = cfg.nLayers() - 1;
        return () -> {
            try (Scope s = new Scope(t.backend())) {
                Jacobian.residual(s, t, b, in, 5, out, 15);
            }
        };
    }

    /** Greedy generation of 128 tokens after a 16-token prompt, with the KV cache. */
    public static Runnable generate(Transformer t) {
        int[][] prompt = randomTokens(1, 16, t.config().vocab(), 2);
        return () -> Generator.generate(t, prompt, 128, Sampling.greedy(), OptionalInt.empty(), Hooks.none(), 0);
    }
}
