package loupe.engine.model;

import loupe.engine.Batch;
import loupe.engine.Compare;
import loupe.engine.Fixtures;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.TestBackends;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.HostTensor;
import loupe.engine.io.SafeTensors;
import loupe.kernels.Backend;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The GPT-2 forward against llm.c's numbers: logits and every hook the fixture holds, from both file
 * formats, on every backend of {@link TestBackends}.
 */
class Gpt2FixtureTest {
    static Stream<Arguments> cases() {
        return TestBackends.cases(new Object[]{"gpt2-tiny-a", "."}, new Object[]{"gpt2-tiny-a", "model.llmc.bin"},
                new Object[]{"gpt2-tiny-b", "."}, new Object[]{"gpt2-tiny-b", "model.llmc.bin"});
    }

    @ParameterizedTest(name = "{0}: {1} {2}")
    @MethodSource("cases")
    void hooksAndLogitsMatchLlmc(TestBackends.Target device, String fixture, String file) {
        Path dir = Fixtures.dir().resolve(fixture);
        Path weights = file.equals(".") ? dir : dir.resolve(file);
        try (Backend be = device.open(); Arena arena = Arena.ofConfined(); Model m = Model.load(weights, be); Scope s = new Scope(be)) {
            SafeTensors ref = SafeTensors.open(dir.resolve("expected.safetensors"), arena);
            Map<String, Tensor> cache = new LinkedHashMap<>();
            Batch batch = Batch.of(Fixtures.rows(ref.get("tokens")));
            var f = m.transformer().forward(s, batch, new Hooks().cache(n -> true, s, cache));
            cache.put("logits", f.logits);
            int compared = 0;
            double worst = 0;
            for (String name : ref.names()) {
                if (name.startsWith("grad.") || name.equals("tokens") || name.equals("targets") || name.equals("probs")
                        || name.startsWith("loss")) continue;
                Tensor t = cache.get(name);
                assertTrue(t != null, "no hook " + name);
                HostTensor r = ref.get(name);
                assertEquals(java.util.Arrays.toString(r.shape()), java.util.Arrays.toString(java.util.Arrays.stream(t.shape()).asLongStream().toArray()), name + " shape");
                worst = Math.max(worst, Compare.assertClose(fixture + " " + name, t.toFloatArray(), r.toFloatArray(), 1e-4));
                compared++;
            }
            System.out.printf("%s %s (%s): %d tensors, worst max rel err %.3g%n", device, fixture, file, compared, worst);
            assertTrue(compared > 20);
        }
    }
}
