package loupe.bench.cli;

import loupe.engine.Fixtures;
import loupe.engine.io.Json;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** {@code loupe bench case}, the loupe side of bench/compare: every model case runs and prints one JSON line of timings. */
class BenchCaseCommandTest {
    @ParameterizedTest
    @ValueSource(strings = {"forward", "forward_cached", "patching", "jacobian", "generate"})
    void printsOneJsonLineOfTimings(String which) {
        Map<?, ?> r = run(which);
        assertEquals(which, r.get("case"));
        assertEquals(2, ((List<?>) r.get("times_ms")).size());
        assertTrue(((Number) r.get("median_ms")).doubleValue() > 0, r.toString());
    }

    /** The copy case reports the bytes it moves (read + written, as torch_ref.py), from which the table takes its rate. */
    @Test
    void copyReportsItsBytes() {
        Map<?, ?> r = run("copy");
        double bytes = ((Number) r.get("bytes")).doubleValue(), median = ((Number) r.get("median_ms")).doubleValue();
        assertEquals(2.0 * 256 * (1 << 20), bytes);
        assertEquals(bytes / median / 1e6, ((Number) r.get("gb_per_s")).doubleValue(), 1e-9 * bytes / median);
    }

    static Map<?, ?> run(String which) {
        PrintStream old = System.out;
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        int rc;
        try {
            System.setOut(new PrintStream(buf, true, StandardCharsets.UTF_8));
            rc = Main.execute("bench", "case", "--case", which, "--model", Fixtures.dir().resolve("gpt2-tiny-a").toString(),
                    "--tokens", "16", "--iters", "2");
        } finally {
            System.setOut(old);
        }
        String out = buf.toString(StandardCharsets.UTF_8).trim();
        assertEquals(0, rc, out);
        return (Map<?, ?>) Json.parse(out.substring(out.lastIndexOf('\n') + 1), "bench case output");
    }
}
