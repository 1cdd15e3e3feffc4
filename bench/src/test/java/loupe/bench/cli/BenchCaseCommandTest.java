package loupe.bench.cli;

import loupe.engine.Fixtures;
import loupe.engine.io.Json;
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
        Map<?, ?> r = (Map<?, ?>) Json.parse(out.substring(out.lastIndexOf('\n') + 1), "bench case output");
        assertEquals(which, r.get("case"));
        assertEquals(2, ((List<?>) r.get("times_ms")).size());
        assertTrue(((Number) r.get("median_ms")).doubleValue() > 0, out);
    }
}
