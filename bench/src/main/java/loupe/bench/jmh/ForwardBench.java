package loupe.bench.jmh;

import loupe.engine.Batch;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.Hooks;
import loupe.engine.model.ModelConfig;
import loupe.engine.model.RandomWeights;
import loupe.engine.model.Transformer;
import loupe.kernels.cpu.CpuBackend;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;
import org.openjdk.jmh.infra.Blackhole;

import java.util.HashMap;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;

/**
 * Forward pass of a GPT-2-small-sized model (124M parameters, random weights) on the CPU backend:
 * plain, and with every hook cached.
 * Run (after {@code ./loupe} has built the jars): {@code java --add-modules jdk.incubator.vector
 * -cp "bench/target/loupe-bench.jar:bench/target/lib/*" org.openjdk.jmh.Main ForwardBench}.
 */
@State(org.openjdk.jmh.annotations.Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 3)
@Fork(value = 1, jvmArgsAppend = {"--add-modules", "jdk.incubator.vector", "--enable-native-access=ALL-UNNAMED", "-Xmx8g"})
public class ForwardBench {
    @Param({"1"})
    int batch;
    @Param({"128"})
    int tokens;
    @Param({"2"})
    int threads;

    CpuBackend cpu;
    Transformer model;
    Batch input;

    @Setup(Level.Trial)
    public void setup() {
        cpu = new CpuBackend(threads);
        model = RandomWeights.create(ModelConfig.gpt2(768, 12, 12, 1024, 50257), 124, cpu);
        SplittableRandom r = new SplittableRandom(7);
        int[][] ids = new int[batch][tokens];
        for (int[] row : ids) for (int i = 0; i < tokens; i++) row[i] = r.nextInt(50257);
        input = Batch.of(ids);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        model.weights().close();
        cpu.close();
    }

    @Benchmark
    public void forward(Blackhole bh) {
        try (Scope s = new Scope(cpu)) {
            bh.consume(model.forward(s, input, Hooks.none()).logits);
        }
    }

    @Benchmark
    public void forwardCachingEveryHook(Blackhole bh) {
        try (Scope s = new Scope(cpu)) {
            Map<String, Tensor> cache = new HashMap<>();
            bh.consume(model.forward(s, input, new Hooks().cache(n -> true, s, cache)).logits);
            bh.consume(cache);
        }
    }
}
