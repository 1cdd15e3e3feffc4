package loupe.bench.jmh;

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

import java.util.concurrent.TimeUnit;

/**
 * The cases of the PyTorch comparison ({@code bench/compare}) under JMH, on a GPT-2-small-sized model
 * (124M parameters, random weights), CPU backend: the same bodies as {@code loupe bench case}
 * ({@link CompareCases}). Each takes from 0.15 s to 6 s, so every iteration times one call.
 * Run (after {@code ./loupe} has built the jars): {@code java --add-modules jdk.incubator.vector
 * -cp "bench/target/loupe-bench.jar:bench/target/lib/*" org.openjdk.jmh.Main CompareBench}; one case:
 * {@code ... CompareBench -p which=patching}.
 */
@State(org.openjdk.jmh.annotations.Scope.Benchmark)
@BenchmarkMode(Mode.SingleShotTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3)
@Measurement(iterations = 5)
@Fork(value = 1, jvmArgsAppend = {"--add-modules", "jdk.incubator.vector", "--enable-native-access=ALL-UNNAMED", "-Xmx8g"})
public class CompareBench {
    @Param({"forward_1x128", "forward_8x128", "forward_cached_1x128", "patching", "jacobian", "generate"})
    String which;
    @Param({"2"})
    int threads;

    CpuBackend cpu;
    Transformer model;
    Runnable body;

    @Setup(Level.Trial)
    public void setup() {
        cpu = new CpuBackend(threads);
        model = RandomWeights.create(ModelConfig.gpt2(768, 12, 12, 1024, 50257), 124, cpu);
        body = switch (which) {
            case "forward_1x128" -> CompareCases.forward(model, 1, 128, false);
            case "forward_8x128" -> CompareCases.forward(model, 8, 128, false);
            case "forward_cached_1x128" -> CompareCases.forward(model, 1, 128, true);
            case "patching" -> CompareCases.patching(model);
            case "jacobian" -> CompareCases.jacobian(model);
            case "generate" -> CompareCases.generate(model);
            default -> throw new IllegalArgumentException("unknown case " + which);
        };
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        model.weights().close();
        cpu.close();
    }

    @Benchmark
    public void run() {
        body.run();
    }
}
