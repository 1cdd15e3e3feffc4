package loupe.bench.cli;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.Json;
import loupe.engine.model.ModelConfig;
import loupe.engine.model.Transformer;
import loupe.bench.jmh.CompareCases;
import loupe.kernels.Backend;
import loupe.kernels.cpu.CpuBackend;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Predicate;

/**
 * {@code loupe bench}: quick timings. {@code forward} prints the median ms per forward;
 * {@code case} runs one case of the side-by-side comparison with PyTorch (bench/compare) and prints a
 * JSON line. JMH benchmarks in {@code loupe.bench.jmh} measure the same cases under JMH.
 */
@Command(name = "bench", mixinStandardHelpOptions = true, description = "Quick timings (median over iterations, after warm-up).",
        subcommands = {BenchCommand.Forward.class, BenchCommand.Case.class})
final class BenchCommand implements Runnable {
    @Override
    public void run() {
        new picocli.CommandLine(this).usage(System.out);
    }

    /**
     * The times of {@code iters} timed runs (ms) after a warm-up of at least {@code warmup} untimed runs
     * and at least 3 seconds (at most 50 runs): the JIT compiles the Vector API loops only after a few
     * passes, and before that they run many times slower.
     */
    static double[] time(int warmup, int iters, Runnable body) {
        long start = System.nanoTime();
        for (int i = 0; i < 50 && (i < warmup || System.nanoTime() - start < 3_000_000_000L); i++) body.run();
        double[] t = new double[iters];
        for (int i = 0; i < iters; i++) {
            long t0 = System.nanoTime();
            body.run();
            t[i] = (System.nanoTime() - t0) / 1e6;
        }
        return t;
    }

    static double median(double[] t) {
        double[] s = t.clone();
        Arrays.sort(s);
        return s.length % 2 == 1 ? s[s.length / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    }

    /** FLOPs of a forward: 2 x (non-embedding matmul params) x tokens + unembedding + attention. */
    static double forwardFlops(ModelConfig c, int batch, int tokens) {
        double perTok = 2.0 * c.nLayers() * (2.0 * c.dModel() * c.nHeads() * c.dHead() + 2.0 * c.dModel() * c.nKvHeads() * c.dHead()
                + (c.gatedMlp() ? 3.0 : 2.0) * c.dModel() * c.dMlp()) + 2.0 * c.dModel() * c.vocab();
        double attn = 4.0 * batch * c.nLayers() * (double) tokens * tokens * c.nHeads() * c.dHead();
        return perTok * batch * tokens + attn;
    }

    /** VmRSS of this process in kB (Linux), or 0. */
    static long residentKb() {
        return procStatus("VmRSS:");
    }

    /** VmHWM (peak resident size) in kB since the last {@link #resetPeakResident()}, or 0. */
    static long peakResidentKb() {
        return procStatus("VmHWM:");
    }

    /** Resets the kernel's peak-RSS counter (Linux: write 5 to /proc/self/clear_refs), so that a peak covers one phase. */
    static void resetPeakResident() {
        try {
            java.nio.file.Files.writeString(java.nio.file.Path.of("/proc/self/clear_refs"), "5");
        } catch (java.io.IOException | RuntimeException ignored) {
            // not Linux, or not allowed: the peak then covers the whole process
        }
    }

    private static long procStatus(String key) {
        try {
            for (String line : java.nio.file.Files.readAllLines(java.nio.file.Path.of("/proc/self/status")))
                if (line.startsWith(key)) return Long.parseLong(line.substring(key.length()).trim().split("\\s+")[0]);
        } catch (java.io.IOException | RuntimeException ignored) {
            // not Linux
        }
        return 0;
    }

    /** FLOPs of one block's forward over {@code batch x tokens}: its matmuls and attention. */
    static double blockFlops(ModelConfig c, int batch, int tokens) {
        double perTok = 2.0 * (2.0 * c.dModel() * c.nHeads() * c.dHead() + 2.0 * c.dModel() * c.nKvHeads() * c.dHead()
                + (c.gatedMlp() ? 3.0 : 2.0) * c.dModel() * c.dMlp());
        return perTok * batch * tokens + 4.0 * batch * (double) tokens * tokens * c.nHeads() * c.dHead();
    }

    @Command(name = "forward", mixinStandardHelpOptions = true, description = "Median milliseconds per forward pass.")
    static final class Forward implements Runnable {
        @Mixin
        ModelOptions model;
        @Option(names = "--batch", defaultValue = "1") int batch;
        @Option(names = "--tokens", defaultValue = "128") int tokens;
        @Option(names = "--cache", paramLabel = "PATTERN", description = "Cache hooks matching this glob (repeatable).") List<String> cache = new ArrayList<>();
        @Option(names = "--iters", defaultValue = "10") int iters;

        @Override
        public void run() {
            try (Backend be = model.backend(); Model m = model.load(be)) {
                Transformer t = m.transformer();
                Batch b = Batch.of(CompareCases.randomTokens(batch, tokens, t.config().vocab(), 1));
                Predicate<String> wanted = cache.isEmpty() ? null : RunCommand.patterns(cache, t.allHookNames());
                long before = residentKb();
                resetPeakResident();
                long[] activationBytes = {0};
                double[] times = time(2, iters, () -> {
                    try (Scope s = new Scope(be)) {
                        Hooks h = wanted == null ? Hooks.none() : new Hooks().cache(wanted, s, new HashMap<>());
                        t.forward(s, b, h);
                        activationBytes[0] = s.bytes();
                    }
                });
                System.out.printf("forward %dx%d%s: median %.2f ms over %d iterations (%.1f GFLOP/s)%n", batch, tokens,
                        cache.isEmpty() ? "" : " caching " + cache, median(times), iters, forwardFlops(t.config(), batch, tokens) / median(times) / 1e6);
                long peak = peakResidentKb();
                if (peak > 0)
                    System.out.printf("resident memory: %.0f MB after loading (weights %.0f MB); a forward holds %.0f MB of activations%s;"
                                    + " peak %.0f MB during the forwards = %.2f x (weights + activations)%n",
                            before / 1048576.0 * 1024, m.transformer().weights().bytes() / 1048576.0, activationBytes[0] / 1048576.0,
                            cache.isEmpty() ? "" : " and cache", peak / 1024.0,
                            peak * 1024.0 / (m.transformer().weights().bytes() + activationBytes[0]));
            }
        }
    }

    @Command(name = "case", mixinStandardHelpOptions = true, description = "One case of bench/compare, as a JSON line.")
    static final class Case implements Runnable {
        @Mixin
        ModelOptions model;
        @Option(names = "--case", required = true, description = "forward, forward_cached, patching, jacobian, generate, gemm, copy") String name;
        @Option(names = "--batch", defaultValue = "1") int batch;
        @Option(names = "--tokens", defaultValue = "128") int tokens;
        @Option(names = "--iters", defaultValue = "5") int iters;
        @Option(names = "--json", description = "Print JSON (the default; kept for symmetry with the torch script).") boolean json;

        @Override
        public void run() {
            int threads = model.threads == null ? 2 : model.threads;
            try (CpuBackend be = new CpuBackend(threads)) {
                Map<String, Object> r = new LinkedHashMap<>();
                r.put("impl", "loupe");
                r.put("case", name);
                double[] times;
                double flops = 0;
                switch (name) {
                    case "gemm" -> {
                        int m = 1024, k = 768, n = 3072;
                        try (Scope s = new Scope(be)) {
                            Tensor a = s.zeros(m, k), bm = s.zeros(k, n), c = s.zeros(m, n);
                            a.fill(0.5f);
                            bm.fill(0.25f);
                            times = time(3, Math.max(iters, 20), () -> be.gemm(false, false, m, n, k, 1f, a.buffer(), 0, k, 0,
                                    bm.buffer(), 0, n, 0, 0f, c.buffer(), 0, n, 0, 1));
                        }
                        flops = 2.0 * m * n * k;
                        r.put("gflops", flops / median(times) / 1e6);
                    }
                    case "copy" -> {
                        long n = 64L << 20;   // 256 MB of floats
                        try (Scope s = new Scope(be)) {
                            Tensor a = s.zeros((int) n), c = s.zeros((int) n);
                            times = time(2, Math.max(iters, 10), () -> c.copyFrom(a));
                        }
                        r.put("bytes", 2L * n * 4);   // STREAM's convention, as torch_ref.py: read + written
                        r.put("gb_per_s", 2.0 * n * 4 / median(times) / 1e6);
                    }
                    default -> {
                        try (Model m = model.load(be)) {
                            Transformer t = m.transformer();
                            ModelConfig cfg = t.config();
                            switch (name) {
                                case "forward", "forward_cached" -> {
                                    times = time(2, iters, CompareCases.forward(t, batch, tokens, name.equals("forward_cached")));
                                    flops = forwardFlops(cfg, batch, tokens);
                                }
                                case "patching" -> {
                                    times = time(1, iters, CompareCases.patching(t));
                                    flops = forwardFlops(cfg, 1, 16) * (cfg.nLayers() * 16 + 2);
                                }
                                case "jacobian" -> {
                                    times = time(1, iters, CompareCases.jacobian(t));
                                    // The floor: a backward of blocks in..out (activation gradients only, about the
                                    // forward's matmul FLOPs) for d_model one-hot rows of 16 tokens.
                                    flops = blockFlops(cfg, cfg.dModel(), 16) * (cfg.nLayers() - CompareCases.jacobianInLayer(cfg));
                                }
                                case "generate" -> {
                                    times = time(1, iters, CompareCases.generate(t));
                                    r.put("weight_bytes", m.transformer().weights().bytes());
                                }
                                default -> throw new LoupeException("unknown case '" + name + "' (forward, forward_cached, patching, jacobian, generate, gemm, copy)");
                            }
                        }
                    }
                }
                r.put("median_ms", median(times));
                List<Object> l = new ArrayList<>();
                for (double t : times) l.add(t);
                r.put("times_ms", l);
                r.put("flops", flops);
                r.put("threads", threads);
                r.put("gemm", be.gemmLibrary());
                System.out.println(Json.write(r));
            }
        }
    }
}
