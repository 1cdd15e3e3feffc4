package loupe.engine.model;

import loupe.engine.Fixtures;
import loupe.engine.Model;
import loupe.engine.TestBackends;
import loupe.engine.generate.Generator;
import loupe.engine.generate.Sampling;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.Json;
import loupe.engine.tokenizer.Llama2cTokenizer;
import loupe.kernels.Backend;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.OptionalInt;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Greedy KV-cached generation reproduces llama2.c's run.c token for token and byte for byte, on every
 * backend of {@link TestBackends}.
 */
class Stories260KGenerationTest {

    @ParameterizedTest(name = "{0}")
    @MethodSource("loupe.engine.TestBackends#all")
    @SuppressWarnings("unchecked")
    void greedyGenerationMatchesRunC(TestBackends.Target device) throws Exception {
        Path dir = Fixtures.dir().resolve("stories260K");
        Map<String, Object> ref = Json.parseObject(Files.readString(dir.resolve("generations.json")), "generations.json");
        int steps = ((Number) ref.get("steps")).intValue();
        try (Backend be = device.open(); Model m = Model.load(dir.resolve("stories260K.bin"), be)) {
            Llama2cTokenizer tok = Llama2cTokenizer.load(dir.resolve("tok512.bin"), OptionalInt.of(m.config().vocab()));
            long tokens = 0, nanos = 0;
            for (Object o : (List<Object>) ref.get("generations")) {
                Map<String, Object> g = (Map<String, Object>) o;
                int[] promptIds = ints((List<Object>) g.get("prompt_ids"));
                int[] expected = ints((List<Object>) g.get("token_ids"));
                assertArrayEquals(promptIds, tok.encode((String) g.get("prompt")), "prompt ids");
                // run.c's -n counts forward() calls including the prompt's; the last one's choice is printed too.
                int newTokens = steps - promptIds.length + 1;
                long t0 = System.nanoTime();
                Generator.Result r = Generator.generate(m.transformer(), new int[][]{promptIds}, newTokens, Sampling.greedy(),
                        OptionalInt.of(Llama2cTokenizer.BOS), Hooks.none(), 0);
                nanos += System.nanoTime() - t0;
                tokens += newTokens;
                assertArrayEquals(expected, r.ids()[0], "token ids for prompt '" + g.get("prompt") + "'");
                StringBuilder out = new StringBuilder();
                int[] ids = r.ids()[0];
                for (int i = 1; i < ids.length; i++) out.append(tok.decodeForPrint(ids[i - 1], ids[i]));
                out.append('\n');
                assertEquals(g.get("stdout"), out.toString(), "stdout for prompt '" + g.get("prompt") + "'");
            }
            System.out.printf("%s stories260K greedy generation: %.0f tokens/s (KV cache, including prefill)%n", device, tokens / (nanos / 1e9));
        }
    }

    static int[] ints(List<Object> l) {
        int[] r = new int[l.size()];
        for (int i = 0; i < r.length; i++) r[i] = ((Number) l.get(i)).intValue();
        return r;
    }
}
