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
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * stories260K (a real pretrained llama2.c model) against run.c's buffers: from the llama2.c file
 * (adjacent-pair rotary) and from the HF layout (rotate-half with permuted q/k rows), on every backend
 * of {@link TestBackends}.
 */
class LlamaFixtureTest {
    static Stream<Arguments> cases() {
        return TestBackends.cases(new Object[]{"stories260K.bin", ""}, new Object[]{"stories260K.bin", "random."},
                new Object[]{"hf", ""}, new Object[]{"hf", "random."});
    }

    @ParameterizedTest(name = "{0}: {1} {2}")
    @MethodSource("cases")
    void matchesRunC(TestBackends.Target device, String file, String pre) {
        Path dir = Fixtures.dir().resolve("stories260K");
        try (Backend be = device.open(); Arena arena = Arena.ofConfined(); Model m = Model.load(dir.resolve(file), be); Scope s = new Scope(be)) {
            SafeTensors ref = SafeTensors.open(dir.resolve("expected.safetensors"), arena);
            Map<String, Tensor> cache = new LinkedHashMap<>();
            Batch batch = Batch.of(ref.get(pre + "tokens").toIntArray());
            var f = m.transformer().forward(s, batch, new Hooks().cache(n -> true, s, cache));
            cache.put("logits", f.logits);
            boolean hf = file.equals("hf");
            int compared = 0;
            double worst = 0;
            for (String name : ref.names()) {
                if (!name.startsWith(pre) || (pre.isEmpty() && name.startsWith("random.")) || name.endsWith("tokens")) continue;
                String hook = name.substring(pre.length());
                // run.c's rotated q/k are in the checkpoint's interleaved layout; the HF model's are in
                // its permuted (rotate-half) layout, so only the llama2.c load can match them.
                if (hf && (hook.endsWith("hook_rot_k") || hook.endsWith("hook_rot_q"))) continue;
                Tensor t = cache.get(hook);
                assertTrue(t != null, "no hook " + hook);
                HostTensor r = ref.get(name);
                assertEquals(Arrays.toString(r.shape()), Arrays.toString(Arrays.stream(t.shape()).asLongStream().toArray()), hook + " shape");
                worst = Math.max(worst, Compare.assertClose(file + " " + name, t.toFloatArray(), r.toFloatArray(), 1e-4));
                compared++;
            }
            System.out.printf("%s stories260K %s %s: %d tensors, worst max rel err %.3g%n", device, file, pre, compared, worst);
            assertTrue(compared >= 8);
        }
    }
}
