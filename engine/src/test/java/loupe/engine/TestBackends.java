package loupe.engine;

import loupe.LoupeException;
import loupe.kernels.Backend;
import loupe.kernels.cpu.CpuBackend;
import loupe.kernels.cuda.Device;
import org.junit.jupiter.api.Assertions;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.params.provider.Arguments;

import java.util.Arrays;
import java.util.Locale;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.stream.Stream;

/**
 * The backends the fixture tests run on, for {@code @ParameterizedTest}s:
 * <ul>
 *   <li>{@code cpu}: always;</li>
 *   <li>{@code emulated}: the CUDA backend with its kernels on the CPU execution harness, so that the
 *       whole engine's CUDA path (launches, cuBLAS argument conventions, the memory pool, copies) runs
 *       end to end in CI. Cases marked {@link #heavy} (minutes on the harness) run on it only with
 *       {@code -Dloupe.emulated=all} (or {@code LOUPE_EMULATED=all}); {@code -Dloupe.emulated=none}
 *       skips every emulated variant;</li>
 *   <li>{@code cuda}: GPU 0, only when asked for with {@code -Dloupe.gpu=true} or {@code LOUPE_GPU=1} and
 *       a CUDA device is usable.</li>
 * </ul>
 * A variant that is not to run here is skipped (a JUnit assumption) and its reason printed, once per
 * JVM and reason. A test takes a {@link Target} as its first parameter and opens the backend in a
 * try-with-resources, so it is closed when the test ends:
 * <pre>{@code
 * static Stream<Arguments> cases() { return TestBackends.cases(new Object[]{"gpt2-tiny-a"}, TestBackends.heavy("gpt2-tiny-b")); }
 *
 * @ParameterizedTest(name = "{0}: {1}") @MethodSource("cases")
 * void test(TestBackends.Target device, String fixture) { try (Backend be = device.open(); ...) { ... } }
 * }</pre>
 */
public final class TestBackends {
    private TestBackends() {}

    private static final Set<String> PRINTED = ConcurrentHashMap.newKeySet();
    private static final Object HEAVY = new Object();

    public enum Kind { CPU, EMULATED, CUDA }

    /** One backend for one case; {@code heavy} cases are opt-in on the emulated device. */
    public record Target(Kind kind, boolean heavy) {
        /** Opens this backend, or skips the calling test (printing why) when it is not to run here. */
        public Backend open() {
            return switch (kind) {
                case CPU -> new CpuBackend(2);
                case EMULATED -> {
                    String mode = emulatedMode();
                    if (mode.equals("none")) skip("emulated-CUDA variants: disabled by -Dloupe.emulated=none");
                    if (heavy && !mode.equals("all"))
                        skip("emulated-CUDA variants of the heavy cases (minutes on the harness): run them with -Dloupe.emulated=all");
                    try {
                        yield Device.emulated();
                    } catch (LoupeException e) {
                        // the kernels build makes the harness library whenever g++ is present: CI must have it
                        if ("true".equalsIgnoreCase(System.getenv("CI"))) Assertions.fail(e.getMessage(), e);
                        skip("emulated-CUDA variants: " + e.getMessage());
                        throw new AssertionError("unreachable");
                    }
                }
                case CUDA -> {
                    if (!gpuAsked()) skip("CUDA variants: enable with -Dloupe.gpu=true or LOUPE_GPU=1");
                    Optional<String> reason = Device.cudaUnavailableReason();
                    if (reason.isPresent()) skip("CUDA variants: " + reason.get());
                    yield Device.cuda(0);
                }
            };
        }

        @Override
        public String toString() {
            return kind.name().toLowerCase(Locale.ROOT);
        }
    }

    /** Whether the GPU variants were asked for: {@code -Dloupe.gpu=true} or {@code LOUPE_GPU=1}. */
    public static boolean gpuAsked() {
        return Boolean.getBoolean("loupe.gpu") || "1".equals(System.getenv("LOUPE_GPU"))
                || "true".equalsIgnoreCase(System.getenv("LOUPE_GPU"));
    }

    /** {@code loupe.emulated}, else {@code LOUPE_EMULATED}: {@code all}, {@code none}, or the default. */
    static String emulatedMode() {
        String p = System.getProperty("loupe.emulated");
        if (p == null || p.isBlank()) p = System.getenv("LOUPE_EMULATED");
        return p == null || p.isBlank() ? "default" : p.trim().toLowerCase(Locale.ROOT);
    }

    /** Every backend, for a test without further parameters. */
    public static Stream<Target> all() {
        return Arrays.stream(Kind.values()).map(k -> new Target(k, false));
    }

    /** Every backend, for a test without further parameters that is {@linkplain #heavy heavy} on the emulated device. */
    public static Stream<Target> allHeavy() {
        return Arrays.stream(Kind.values()).map(k -> new Target(k, true));
    }

    /** A case that takes minutes on the emulated device: it runs there only with {@code -Dloupe.emulated=all}. */
    public static Object[] heavy(Object... args) {
        Object[] c = Arrays.copyOf(args, args.length + 1);
        c[args.length] = HEAVY;
        return c;
    }

    /** Each case on each backend, as arguments {@code (target, case...)}, backend by backend. */
    public static Stream<Arguments> cases(Object[]... cases) {
        return Arrays.stream(Kind.values()).flatMap(k -> Arrays.stream(cases).map(c -> {
            boolean heavy = c.length > 0 && c[c.length - 1] == HEAVY;
            Object[] args = new Object[heavy ? c.length : c.length + 1];
            args[0] = new Target(k, heavy);
            System.arraycopy(c, 0, args, 1, args.length - 1);
            return Arguments.of(args);
        }));
    }

    private static void skip(String why) {
        if (PRINTED.add(why)) System.out.println("skipped " + why);
        Assumptions.abort(why);
    }
}
